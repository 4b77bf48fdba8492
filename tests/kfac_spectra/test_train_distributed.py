"""The training harness on 2 gloo ranks: the same run as one process, files
written by rank 0 only, resume on the same or another number of ranks, and the
CLI under torchrun.

Oracles: one process on the same configuration (the ranks split each global
batch; float32, so the trajectories agree to rounding, ``HARNESS_RTOL``) with SGD,
whose trajectory does not depend on how the batch is split (the harness's K-FAC
samples its Monte-Carlo Fisher per rank; its exact parity with one process is
tested in ``test_kfac_distributed.py``); the uninterrupted 2-rank K-FAC run (a
resumed one must reproduce it bit for bit).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kfac_spectra import train as train_module
from kfac_spectra.launch import Launch, launch_from
from kfac_spectra.train import RESUME_FILE, TrainConfig, resolve_config, train

HARNESS_RTOL = 1e-4  # float32 runs of 10 steps, 2 ranks vs one process
SPAWN_TIMEOUT_S = 300
TINY = {
    "model": "mlp",
    "data": "digits",
    "width": 1 / 64,
    "steps": 10,
    "batch_size": 32,
    "checkpoints": "4",
    "measure_examples": 48,
    "inverse_interval": 3,
    "lr": 0.01,
}
KILL_AT = 6  # after the checkpoint at 4, before the final one


class _Kill(Exception):
    pass


def _tiny(**changes: object) -> TrainConfig:
    return resolve_config(None, {**TINY, **changes})


def _kill(step: int, loss: float) -> None:
    del loss
    if step == KILL_AT:
        raise _Kill


def _params(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / RESUME_FILE, weights_only=False)
    return torch.cat([t.reshape(-1).double() for t in state["model"].values()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _record_writes(rank: int, log: list[str]) -> None:
    """Wrap the run-folder opener and the collector, to log who writes what."""
    for name in ("open_run_folder", "collect_checkpoint"):
        original = getattr(train_module, name)

        def wrapper(path, *args, _original=original, **kwargs):
            log.append(str(path))
            return _original(path, *args, **kwargs)

        setattr(train_module, name, wrapper)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    path = Path(out)
    writes: list[str] = []
    _record_writes(rank, writes)
    try:
        kfac, sgd = _tiny(), _tiny(optimizer="sgd")
        train(kfac, path / "kfac-straight")
        try:
            train(kfac, path / "kfac-killed", step_callback=_kill)
        except _Kill:
            pass
        seen: list[int] = []
        train(kfac, path / "kfac-killed", step_callback=lambda s, _: seen.append(s))
        train(sgd, path / "sgd-straight")
        try:
            train(sgd, path / "sgd-killed", step_callback=_kill)
        except _Kill:
            pass
        train(sgd, path / "single-killed")  # a one-process run, resumed here
        try:
            train(_tiny(batch_size=33), path / "bad")
            message = ""
        except ValueError as err:
            message = str(err)
        torch.save(
            {"writes": writes, "first": seen[0], "bad": message},
            path / f"rank-{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_reads_the_torchrun_environment() -> None:
    assert launch_from({}, "cpu") == Launch(0, 0, 1, "cpu")
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_from(env, "cuda") == Launch(3, 1, 4, "cuda:1")
    assert launch_from(env, "cpu").distributed
    with pytest.raises(ValueError, match="MASTER_PORT unset: launch with torchrun"):
        launch_from({k: v for k, v in env.items() if k != "MASTER_PORT"}, "cpu")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        launch_from({"WORLD_SIZE": "two"}, "cpu")


def test_world_size_must_divide_the_batch(tmp_path: Path, monkeypatch) -> None:
    """Checked first: nothing is written (every rank raises the same error)."""
    monkeypatch.setattr(train_module, "group_position", lambda: (1, 3))
    with pytest.raises(ValueError, match="batch_size=32 is not divisible by the world"):
        train(_tiny(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(SPAWN_TIMEOUT_S)
def test_two_ranks_train_like_one_process_and_resume_across_world_sizes(
    tmp_path: Path,
) -> None:
    sgd = _tiny(optimizer="sgd")
    single = train(sgd, tmp_path / "single-straight")
    with pytest.raises(_Kill):
        train(sgd, tmp_path / "single-killed", step_callback=_kill)
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    logs = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(2)]
    assert logs[1]["writes"] == []  # rank 0 writes every file
    assert any("kfac-killed" in w for w in logs[0]["writes"])
    assert all("divisible by the world size 2" in log["bad"] for log in logs)
    assert not (tmp_path / "bad").exists()  # the error came before any work

    # K-FAC killed and resumed on 2 ranks: bit for bit
    assert all(log["first"] == KILL_AT - 1 for log in logs)
    kfac_straight = _params(tmp_path / "kfac-straight")
    assert torch.equal(_params(tmp_path / "kfac-killed"), kfac_straight)
    # 2 ranks = 1 process; 1 process -> 2 ranks; 2 ranks -> 1 process
    single_params = _params(tmp_path / "single-straight")
    assert _rel(_params(tmp_path / "sgd-straight"), single_params) < HARNESS_RTOL
    assert _rel(_params(tmp_path / "single-killed"), single_params) < HARNESS_RTOL
    resumed = train(sgd, tmp_path / "sgd-killed")
    assert resumed.collected == single.collected == (4, 10)
    assert _rel(_params(tmp_path / "sgd-killed"), single_params) < HARNESS_RTOL


@pytest.mark.slow
@pytest.mark.timeout(SPAWN_TIMEOUT_S)
def test_torchrun_cli_trains_on_two_ranks(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    args = ["--model", "mlp", "--data", "digits", "--width", str(1 / 64)]
    args += ["--steps", "4", "--batch-size", "32", "--checkpoints", "0"]
    args += ["--measure-examples", "48", "--lr", "0.01", "--optimizer", "sgd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    launch = [
        str(torchrun),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
    ]
    proc = subprocess.run(
        [*launch, "-m", "kfac_spectra", "run", "--out", str(tmp_path / "run"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=SPAWN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("on 2 ranks") == 1  # rank 0 prints
    single = train(_tiny(steps=4, checkpoints="0", optimizer="sgd"), tmp_path / "x")
    assert single.collected == (0, 4)
    assert _rel(_params(tmp_path / "run"), _params(tmp_path / "x")) < HARNESS_RTOL
    bad = subprocess.run(
        [*launch, "-m", "kfac_spectra", "run", "--out", str(tmp_path / "bad"), *args]
        + ["--batch-size", "33"],
        capture_output=True,
        text=True,
        env=env,
        timeout=SPAWN_TIMEOUT_S,
    )
    assert bad.returncode != 0
    assert "divisible by the world size 2" in bad.stderr
