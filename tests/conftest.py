"""Suite-wide settings.

Torch runs on one intra-op thread: the tests use small tensors, for which thread
synchronisation costs more than it saves, and on a shared 2-core machine an
operation can wait milliseconds for a descheduled thread (seen: a softmax of 6x3
at 8 ms; the Monte-Carlo tests ran 10x slower). Results do not depend on it.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_benchmark():
    """A loader of ``benchmarks/NAME.py`` as a module, for tests that check a
    benchmark's settings or its cost model (the scripts are not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(BENCHMARKS))  # the scripts' shared helpers
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCHMARKS))
        return module

    return load
