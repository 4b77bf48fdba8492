"""nqm.runtime: the allocator setting removes page faults from NumPy temporaries."""

import subprocess
import sys
import textwrap

import pytest

import nqm.runtime

# Minor page faults per evaluation of a momentum + EMA closed form at d = 10^4 with
# glibc's defaults are in the hundreds; with freed memory kept they must vanish
# (a handful may remain from the interpreter).
MAX_FAULTS_PER_EVAL_KEPT = 5.0

_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import nqm, nqm.runtime
    keep = sys.argv[1] == "1"
    applied = nqm.runtime.keep_freed_memory() if keep else False
    problem = nqm.NQMProblem.power_law(dim=10_000)
    opt = nqm.Optimizer(0.5, momentum=0.9, ema=0.99, precond_power=0.5)
    for _ in range(5):
        nqm.expected_loss(problem, opt, 128.0, 1000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        nqm.expected_loss(problem, opt, 128.0, 1000)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(int(applied), (after - before) / 40)
    """
)


def _faults(keep: bool) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "1" if keep else "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "1", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_removes_page_faults():
    applied, kept = _faults(True)
    if not applied:
        pytest.skip("C library is not glibc")
    _, default = _faults(False)
    assert kept <= MAX_FAULTS_PER_EVAL_KEPT
    assert default > 10 * max(kept, 1.0)


def test_negative_size_is_rejected():
    with pytest.raises(ValueError, match="trim_threshold"):
        nqm.runtime.keep_freed_memory(trim_threshold=-1)


def test_torch_device_accepts_devices_that_compute():
    import torch

    assert nqm.runtime.torch_device("cpu") == torch.device("cpu")
    assert nqm.runtime.torch_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.is_available():
        assert nqm.runtime.torch_device("cuda").type == "cuda"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("no-such-device", "must name a torch device"),
        (None, "must name a torch device"),
        ("meta", "'meta' cannot compute in float64"),
    ],
)
def test_torch_device_rejects_devices_that_cannot_compute(device, message):
    with pytest.raises(ValueError, match=message) as info:
        nqm.runtime.torch_device(device)
    assert "\n" not in str(info.value)


def test_torch_device_rejects_absent_cuda():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            nqm.runtime.torch_device("cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match="CUDA device"):
            nqm.runtime.torch_device(f"cuda:{n}")
