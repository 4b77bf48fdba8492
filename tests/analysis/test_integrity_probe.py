"""A probe of every command that writes a folder, as a careless user and a bad
machine would drive them: bad options, kills at random times, truncated files of
every kind and concurrent writers.

It asserts what a user must be able to trust:

* no traceback, ever: a bad option or a bad file is one line, exit status 2;
* no exit 0 on corrupt input;
* no folder whose manifest disagrees with its files (every listed file has its
  listed checksum), whatever the moment of a kill;
* a killed run, rerun, ends with the records of an uninterrupted run (the
  arrays bit for bit, the tables but for their wall-time columns).

Oracles: hashlib's SHA-256 (through :func:`nqm.run_folder.verify_folder`), the
uninterrupted runs' own files, exit statuses. Kill times are drawn from a seeded
generator over the measured length of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workloads
from cli_workloads import NET_TINY, NQM_TINY  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: Seed of the kill times.
SEED = 20
#: Successive kills of one run per command.
KILLS = 3
#: Wall-clock bound of one command.
PROC_TIMEOUT_S = 240

NQM = [*NQM_TINY, "--batch-sizes", "1,4,16", "--families", "sgd,momentum"]
NET = [*NET_TINY, "--trials", "3"]
KFAC = [
    "run", "--model", "mlp", "--data", "digits", "--width", "0.015625",
    "--steps", "12", "--batch-size", "32", "--checkpoints", "0,4,8",
    "--measure-examples", "48", "--inverse-interval", "3",
]  # fmt: skip

#: net-predict on the reference-run path: a tiny run of the embedded workload
#: (its TOML written by :func:`_argv`), SGD only, no sweep.
PREDICT = [
    "net-predict", "--config", "WORKLOAD_TOML", "--target", "2.0", "--predict", "sgd",
    "--batch-sizes", "16,64,256", "--checkpoints", "0,10", "--reference-steps", "20",
    "--no-figures", "--replicas", "50",
]  # fmt: skip
WORKLOAD_TOML = "num_samples = 400\neval_size = 100\nwidth = 0.125\n"

#: Bad options, each appended to the tiny command line of its command.
BAD_NQM = (
    "--batch-sizes=0 --batch-sizes=x --families=nope --powers=2 --targets=-1 "
    "--dim=0 --dim=2.5 --workers=-3 --device=nowhere --executor=slurm "
    "--ray-address=x:1 --problem=missing.npz --problem=. --config=missing.toml "
    "--dim=x --dim=-5 --dim=nan --h-power=x --h-power=nan --c-power=inf "
    "--init-sq=-1 --init-sq=0 --init-sq=x --targets= --targets=nan --targets=inf "
    "--threshold-targets=x --batch-sizes=2^x --batch-sizes=-4 --batch-sizes=1..0 "
    "--families= --families=sgd,sgd,nope --powers=-0.5 --powers=nan --powers=x "
    "--fixed-momentum=1 --fixed-momentum=-0.1 --bcrit-targets=x "
    "--bcrit-targets=-1 --bcrit-families=nope --ramp-budgets=x --ramp-budgets=0 "
    "--workers=x --workers=1.5 --device=cuda:x"
).split()
BAD_NET = (
    "--trials=0 --optimizers=lbfgs --batch-sizes=100000 --model=no.such:factory "
    "--data=nope --loss=hinge --metric=accuracy --target=-1 --max-steps=0 "
    "--schedule=cosine --archive=missing-dir --width=0 --width=x --target=nan "
    "--target=inf --batch-sizes=0 --batch-sizes=x --trials=x --trials=-1 "
    "--max-steps=x --eval-every=0 --eval-every=x --seed=-1 --seed=x --seeds=-1 "
    "--thresholds=0.1 --thresholds=x --n-boot=-1 --n-boot=x --archive-metric=nope "
    "--workers=x --optimizers= --loss= --metric="
).split()
BAD_PREDICT = (
    "--floor=3 --predict=lbfgs --checkpoints=x --checkpoints=0,9999 "
    "--batch-sizes=0 --target-mapping=odd --replicas=0 --problem=missing.npz "
    "--sweep=missing-dir --reference-steps=-1 --target=x --target=nan --floor=x "
    "--floor=nan --floor=inf --thresholds=x --thresholds=0.1 --replicas=x "
    "--n-boot=-1 --seed=x --workers=-1 --run=missing-dir "
    "--reference-config=missing.toml --width=0 --predict= --batch-sizes=x "
    "--target-mapping= --model=nope --data=nope --loss=hinge --metric=test_error"
).split()
BAD_KFAC = (
    "--steps=-1 --batch-size=100000 --model=transformer9 --data=nope "
    "--optimizer=lbfgs --lr=abc --checkpoints=x --width=-1 --config=missing.toml "
    "--data-size=10 --steps=x --steps=1.5 --batch-size=0 --batch-size=x --lr=-1 "
    "--lr=nan --momentum=1.5 --momentum=x --weight-decay=-1 --damping=0 "
    "--damping=-1 --kl-clip=-1 --factor-interval=0 --inverse-interval=0 "
    "--checkpoints=-1 --checkpoints=100 --factor-source=nope --measure-examples=0 "
    "--measure-fisher=nope --mc-samples=0 --seed=x --data-size=-1 --data-seed=x "
    "--width=nan --device=nowhere"
).split()
#: The deep-autoencoder benchmark, in a few iterations, and its bad options.
AUTOENCODER = [
    "autoencoder", "--iterations", "3", "--sgd-iterations", "3", "--train-size", "64",
]  # fmt: skip
BAD_AUTOENCODER = (
    "--threads=0 --threads=x --train-size=0 --iterations=-1 --sgd-iterations=x "
    "--methods=nope --seed=x --eval-interval=0 --target-error=-1 --sgd-lr=-1 "
    "--sgd-batch-size=0 --sgd-max-momentum=1.5 --kfac-initial-batch=0 "
    "--kfac-full-batch-at=-1 --kfac-damping=-1 --kfac-factor-decay=1.5 "
    "--kfac-inverse-interval=0 --kfac-lm-interval=0 --dtype=float16 "
    "--mnist-dir=missing"
).split()
#: Bad command lines as a whole.
BAD_LINES = (
    (analysis_main, ["verify-derivations", "--out", "no/such/dir/a.md"]),
    (analysis_main, ["verify-derivations", "--json", "no/such/dir/a.json"]),
    (kfac_main, ["report", "missing-run"]),
)


def _argv(argv: list[str], tmp_path: Path) -> list[str]:
    """``argv`` with the workload TOML placeholder replaced by a written file."""
    if "WORKLOAD_TOML" not in argv:
        return argv
    path = tmp_path / "workload.toml"
    path.write_text(WORKLOAD_TOML)
    return [str(path) if a == "WORKLOAD_TOML" else a for a in argv]


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


#: Record fields that measure the run, not its result (wall time).
TIMING_FIELDS = ("seconds",)


def _results(path: Path) -> list:
    """A table's records without their timing fields, in a fixed order (a log
    is appended in completion order)."""
    text = path.read_text()
    if path.suffix == ".csv":
        rows = [dict(r) for r in csv.DictReader(io.StringIO(text))]
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        rows = json.loads(text)
    for r in rows:
        for key in TIMING_FIELDS:
            r.pop(key, None)
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def _one_line_exit_2(code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and lines and "error" in lines[-1], err
    assert "Traceback" not in err, err


def test_bad_options_are_one_line_and_create_no_folder(tmp_path, capsys):
    cases = [(analysis_main, [*NQM, bad]) for bad in BAD_NQM]
    cases += [(analysis_main, [*NET, bad]) for bad in BAD_NET]
    cases += [(analysis_main, [*_argv(PREDICT, tmp_path), bad]) for bad in BAD_PREDICT]
    cases += [(kfac_main, [*KFAC, bad]) for bad in BAD_KFAC]
    cases += [(kfac_main, [*AUTOENCODER, bad]) for bad in BAD_AUTOENCODER]
    for i, (main, argv) in enumerate([*cases, *BAD_LINES]):
        folder = tmp_path / f"bad{i}"
        if argv[0] != "report":
            argv = [*argv, "--out", str(folder / "out")]
        if argv[0].endswith("-scaling"):
            argv += ["--figures", str(folder / "figs")]
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert "Traceback" not in err, argv
        assert len([x for x in err.strip().splitlines() if "error" in x]) == 1, err
        assert not folder.exists(), argv


@pytest.mark.parametrize(
    ("module", "argv", "records"),
    [
        ("analysis", NQM, ["records.csv", "records.json", "critical_batch.csv"]),
        ("analysis", NET, ["trials.jsonl", "steps.csv"]),
        ("analysis", PREDICT, ["steps.csv", "b_crit.csv"]),
        ("kfac_spectra", KFAC, ["step_000004/params.npz", "step_000012/stats.npz"]),
    ],
)
def test_kills_at_random_times(tmp_path, module, argv, records):
    argv = _argv(argv, tmp_path)
    rng = np.random.default_rng(SEED)
    straight = tmp_path / "straight"
    t0 = time.perf_counter()
    code, err = _finish(_start(module, argv, straight))
    wall = time.perf_counter() - t0
    assert code == 0, err
    for folder in _folders(straight):
        assert verify_folder(folder)["complete"] is True
    # one folder, killed KILLS times in a row (each rerun resumes the last)
    out = tmp_path / "killed"
    for when in rng.uniform(0.3, 1.0, size=KILLS) * wall:
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
        else:
            assert _results(out / name) == _results(straight / name), name


@pytest.mark.parametrize(
    ("module", "argv"),
    [("analysis", NQM), ("analysis", PREDICT), ("kfac_spectra", KFAC)],
)
def test_concurrent_writers(tmp_path, module, argv):
    argv = _argv(argv, tmp_path)
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


def _each_truncation_refused(folder: Path, names) -> None:
    """Each file, truncated alone, is named by the folder's verification; the
    folder verifies again once it is restored."""
    for name in names:
        saved = (folder / name).read_bytes()
        _truncate(folder / name)
        with pytest.raises(CorruptFileError, match=name):
            verify_folder(folder)
        (folder / name).write_bytes(saved)
    verify_folder(folder)


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
    # report's own options on a sound run
    for bad in (["--step", "x"], ["--step", "9999"], ["--nqm-step", "9999"],
                ["--final-step", "9999"], ["--final-step", "x"]):  # fmt: skip
        try:
            code = kfac_main(["report", str(base), *bad])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        _one_line_exit_2(code, capsys.readouterr().err)
    verify_folder(base)
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
    _each_truncation_refused(
        out, ("records.csv", "records.json", "config.toml", "timings.json")
    )

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


def test_truncations_of_net_predict_outputs_and_its_reference_run(tmp_path, capsys):
    argv = [*_argv(PREDICT, tmp_path), "--out", str(tmp_path / "pred")]
    out = tmp_path / "pred"
    assert analysis_main(argv) == 0
    capsys.readouterr()
    _each_truncation_refused(
        out, ("prediction.json", "prediction.md", "steps.csv", "b_crit.csv")
    )
    # a corrupt file of the reference run stops the rerun, naming it
    for name in ("step_000010/stats.npz", "step_000000/params.npz", "resume.pt"):
        copy = tmp_path / f"copy-{name.replace('/', '-')}"
        shutil.copytree(out, copy)
        _truncate(copy / "reference" / name)
        code = analysis_main([*argv[:-1], str(copy)])
        err = capsys.readouterr().err
        _one_line_exit_2(code, err)
        assert name.split("/")[-1] in err, err
