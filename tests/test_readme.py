"""Every ```python block of README.md and docs/*.md runs as written.

Each block is executed in a fresh namespace. A block that continues a story
the prose sets up (``model``, ``batches`` for a training loop) gets those names
from :data:`CONTEXT`, a small, seeded stand-in; a name that is neither defined
by the block nor in the context fails the test, so the documentation cannot
drift from the API. Shell blocks are not run (the CLI smoke tests cover them).

The blocks are kept small enough to run in seconds, so they run in the default
suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list:
    params = []
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            source = match.group(1)
            params.append(
                pytest.param(source, id=f"{doc.relative_to(REPO).as_posix()}:{line}")
            )
    return params


def _context() -> dict:
    """The names the README's training-loop block assumes: a small classifier,
    a few batches of its inputs and labels, and ``torch.nn.functional as F``."""
    import torch
    from torch import nn
    from torch.nn import functional

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    batches = [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(6)
    ]
    return {"model": model, "batches": batches, "F": functional}


CONTEXT = _context


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 2


@pytest.mark.parametrize("source", _blocks())
def test_code_block_runs(source):
    namespace = CONTEXT()
    before = {
        name: p.detach().clone() for name, p in namespace["model"].named_parameters()
    }
    exec(compile(source, "<readme block>", "exec"), namespace)  # noqa: S102
    if "model" in source and ".step()" in source:
        # a training loop that ran changed the model
        after = dict(namespace["model"].named_parameters())
        assert any(not after[n].detach().equal(v) for n, v in before.items())
