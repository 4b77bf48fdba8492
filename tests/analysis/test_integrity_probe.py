"""A probe of every command that writes a folder, as a careless user and a bad
machine would drive them: bad options, kills at random times, truncated files of
every kind and concurrent writers.

It asserts what a user must be able to trust:

* no traceback, ever: a bad option or a bad file is one line, exit status 2;
* no exit 0 on corrupt input;
* no folder whose manifest disagrees with its files (every listed file has its
  listed checksum), whatever the moment of a kill;
* a killed run, rerun, ends with the records of an uninterrupted run, byte for
  byte.

Oracles: hashlib's SHA-256 (through :func:`nqm.run_folder.verify_folder`), the
uninterrupted runs' own files, exit statuses. Kill times are drawn from a seeded
generator over the measured length of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.__main__ import main as analysis_main
from kfac_spectra.__main__ import main as kfac_main
from nqm.run_folder import CorruptFileError, verify_folder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: Seed of the kill times.
SEED = 20
#: Kills per command.
KILLS = 3
#: Wall-clock bound of one command.
PROC_TIMEOUT_S = 240

NQM = [
    "nqm-scaling", "--dim", "20", "--batch-sizes", "1,4,16", "--powers", "0",
    "--targets", "0.05", "--families", "sgd,momentum", "--threshold-targets", "0.1",
    "--bcrit-targets", "", "--ramp-budgets", "", "--fixed-momentum", "0",
    "--workers", "1",
]  # fmt: skip
NET = [
    "net-scaling", "--model", "netscale_workloads:small_mlp",
    "--data", "netscale_workloads:blobs", "--target", "0.6", "--optimizers", "sgd",
    "--batch-sizes", "4,8", "--trials", "3", "--max-steps", "40",
    "--eval-every", "5", "--n-boot", "5", "--workers", "1",
]  # fmt: skip
KFAC = [
    "run", "--model", "mlp", "--data", "digits", "--width", "0.015625",
    "--steps", "12", "--batch-size", "32", "--checkpoints", "0,4,8",
    "--measure-examples", "48", "--inverse-interval", "3",
]  # fmt: skip

BAD_ANALYSIS = [
    [*NQM, "--batch-sizes", "0"],
    [*NQM, "--batch-sizes", "x"],
    [*NQM, "--families", "nope"],
    [*NQM, "--powers", "2"],
    [*NQM, "--targets", "-1"],
    [*NQM, "--dim", "0"],
    [*NQM, "--dim", "2.5"],
    [*NQM, "--workers", "-3"],
    [*NQM, "--device", "nowhere"],
    [*NQM, "--executor", "slurm"],
    [*NQM, "--ray-address", "x:1"],
    [*NQM, "--problem", "missing.npz"],
    [*NQM, "--problem", "."],
    [*NQM, "--config", "missing.toml"],
    [*NET, "--trials", "0"],
    [*NET, "--optimizers", "lbfgs"],
    [*NET, "--batch-sizes", "100000"],
    [*NET, "--model", "no.such:factory"],
    [*NET, "--data", "nope"],
    [*NET, "--loss", "hinge"],
    [*NET, "--metric", "accuracy"],
    [*NET, "--target", "-1"],
    [*NET, "--max-steps", "0"],
    [*NET, "--schedule", "cosine"],
    [*NET, "--archive", "missing-dir"],
    ["verify-derivations", "--out", "no/such/dir/a.md"],
    ["verify-derivations", "--json", "no/such/dir/a.json"],
]
BAD_KFAC = [
    [*KFAC, "--steps", "-1"],
    [*KFAC, "--batch-size", "100000"],
    [*KFAC, "--model", "transformer9"],
    [*KFAC, "--data", "nope"],
    [*KFAC, "--optimizer", "lbfgs"],
    [*KFAC, "--lr", "abc"],
    [*KFAC, "--checkpoints", "x"],
    [*KFAC, "--width", "-1"],
    [*KFAC, "--config", "missing.toml"],
    [*KFAC, "--data-size", "10"],
    ["report", "missing-run"],
]


def _env() -> dict[str, str]:
    paths = [str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def _command(module: str, argv: list[str], out: Path) -> list[str]:
    flag = ["--out", str(out)]
    if module == "analysis":
        flag += ["--figures", str(out.parent / (out.name + "-figs"))]
    return [sys.executable, "-m", module, *argv, *flag]


def _start(module: str, argv: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _command(module, argv, out),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=PROC_TIMEOUT_S)
    assert "Traceback" not in err, err
    return proc.returncode, err


def _folders(out: Path) -> list[Path]:
    return [p for p in (out, out.parent / (out.name + "-figs")) if p.is_dir()]


def _manifest_agrees(folder: Path) -> None:
    """A folder has no manifest, or one whose every file has its checksum."""
    if (folder / "manifest.json").exists():
        verify_folder(folder)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_exit_2(code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and lines and "error" in lines[-1], err
    assert "Traceback" not in err, err


def test_bad_options_are_one_line_and_create_no_folder(tmp_path, capsys):
    for i, argv in enumerate(BAD_ANALYSIS + BAD_KFAC):
        out = tmp_path / f"bad{i}" / "out"
        full = [*argv, "--out", str(out)]
        if argv[0] in ("nqm-scaling", "net-scaling"):
            full += ["--figures", str(tmp_path / f"bad{i}" / "figs")]
        if argv[0] == "report":
            full = argv
        main = kfac_main if argv in BAD_KFAC else analysis_main
        try:
            code = main(full)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert "Traceback" not in err, argv
        assert len([x for x in err.strip().splitlines() if "error" in x]) == 1, err
        assert not (tmp_path / f"bad{i}").exists(), argv


@pytest.mark.parametrize(
    ("module", "argv", "records"),
    [
        ("analysis", NQM, ["records.csv", "records.json", "critical_batch.csv"]),
        ("analysis", NET, ["trials.jsonl", "steps.csv"]),
        ("kfac_spectra", KFAC, ["step_000004/params.npz", "step_000012/stats.npz"]),
    ],
)
def test_kills_at_random_times(tmp_path, module, argv, records):
    rng = np.random.default_rng(SEED)
    straight = tmp_path / "straight"
    t0 = time.perf_counter()
    code, err = _finish(_start(module, argv, straight))
    wall = time.perf_counter() - t0
    assert code == 0, err
    for folder in _folders(straight):
        assert verify_folder(folder)["complete"] is True
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        # the first kill lands mid-run; then a rerun is killed too
        for when in rng.uniform(0.3, 1.0, size=2) * wall:
            proc = _start(module, argv, out)
            time.sleep(when)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=PROC_TIMEOUT_S)
            for folder in _folders(out):
                _manifest_agrees(folder)
        code, err = _finish(_start(module, argv, out))
        assert code == 0, err
        for folder in _folders(out):
            assert verify_folder(folder)["complete"] is True
        for name in records:
            if name.endswith(".npz"):
                a, b = np.load(straight / name), np.load(out / name)
                assert a.files == b.files
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=name)
            elif name == "trials.jsonl":  # appended in completion order
                assert sorted((out / name).read_text().splitlines()) == sorted(
                    (straight / name).read_text().splitlines()
                )
            else:
                assert _sha(out / name) == _sha(straight / name), name


@pytest.mark.parametrize(
    ("module", "argv"), [("analysis", NQM), ("kfac_spectra", KFAC)]
)
def test_concurrent_writers(tmp_path, module, argv):
    out = tmp_path / "out"
    procs = [_start(module, argv, out) for _ in range(2)]
    results = [_finish(p) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "in use by pid" in err and len(err.strip().splitlines()) == 1
    for folder in _folders(out):
        assert verify_folder(folder)["complete"] is True


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncations_of_every_file_kind(tmp_path, capsys):
    base = tmp_path / "base"
    assert kfac_main([*KFAC, "--out", str(base)]) == 0
    capsys.readouterr()
    kinds = [
        "step_000004/factors.npz",
        "step_000004/stats.npz",
        "step_000012/params.npz",
        "step_000008/manifest.json",
        "resume.pt",
        "config.json",
        "config.toml",
        "manifest.json",
    ]
    for i, name in enumerate(kinds):
        run = Path(shutil.copytree(base, tmp_path / f"t{i}"))
        _truncate(run / name)
        for argv in (["report", str(run)], [*KFAC, "--out", str(run)]):
            code = kfac_main(argv)
            err = capsys.readouterr().err
            _one_line_exit_2(code, err)
            assert name.split("/")[-1] in err, (name, argv, err)

    out = tmp_path / "nqm"
    figs = tmp_path / "nqm-figs"
    assert analysis_main([*NQM, "--out", str(out), "--figures", str(figs)]) == 0
    for name in ("records.csv", "records.json", "config.toml", "timings.json"):
        saved = (out / name).read_bytes()
        _truncate(out / name)
        with pytest.raises(CorruptFileError, match=name):
            verify_folder(out)
        (out / name).write_bytes(saved)
    verify_folder(out)

    net = tmp_path / "net"
    argv = [*NET, "--out", str(net), "--figures", str(tmp_path / "net-figs")]
    assert analysis_main(argv) == 0
    capsys.readouterr()
    for name in ("trials.jsonl", "sweep.json", "config.toml", "steps.csv"):
        saved = (net / name).read_bytes()
        _truncate(net / name)
        code = analysis_main(argv)
        err = capsys.readouterr().err
        _one_line_exit_2(code, err)
        assert name in err
        (net / name).write_bytes(saved)
