"""Smoke and error-path tests of ``python -m analysis nqm-scaling``.

A tiny study (d = 30, a few batch sizes, one or two families) runs end to end,
once in-process through ``analysis.__main__.main`` and once in a subprocess, so
the README commands cannot rot. Bad options must fail before any work with exit
code 2 and a one-line message naming the option.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import nqm
from analysis.__main__ import build_parser, main
from analysis.cli_scaling import config_from_args
from analysis.config import QUICK_OVERRIDES, ScalingConfig, parse_batch_sizes
from analysis.lr_range import DEGENERATE_RATIO

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--dim", "30",
    "--batch-sizes", "1,4,16,64",
    "--powers", "0",
    "--targets", "0.05",
    "--threshold-targets", "0.1,0.05",
]  # fmt: skip
#: A tuning time no curve here takes: marks records read from a journal entry.
SENTINEL_SECONDS = 98765.5
FIGURE_NAMES = (
    "steps_vs_batch_by_family",
    "steps_vs_batch_by_power",
    "loss_threshold",
    "optimal_lr",
    "pwc_final_lr",
    "schedule_shapes",
    "momentum_transient",
)


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_in_process_end_to_end(tmp_path):
    out, figs = tmp_path / "res", tmp_path / "figs"
    argv = ["nqm-scaling", *TINY, "--families", "sgd,momentum",
            "--out", str(out), "--figures", str(figs)]  # fmt: skip
    assert main(argv) == 0
    for stem in ("records", "critical_batch", "lower_bound", "momentum_transient"):
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.json").is_file()
    for name in FIGURE_NAMES:
        for ext in ("png", "pdf", "csv", "json"):
            assert (figs / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    # no temporary file survives
    assert not [
        p for p in list(out.iterdir()) + list(figs.iterdir()) if p.suffix == ".tmp"
    ]

    rows = _read_csv(out / "records.csv")
    js = json.loads((out / "records.json").read_text())
    assert len(rows) == len(js) == 2 * 4 + 4  # main grid + the extra SGD threshold
    for r, j in zip(rows, js, strict=True):
        steps = float(r["steps"])
        assert (j["steps"] is None and math.isinf(steps)) or j["steps"] == steps
    for fam in ("sgd", "momentum"):
        curve = [
            float(r["steps"])
            for r in rows
            if r["family"] == fam and r["target"] == "0.05"
        ]
        assert len(curve) == 4
        assert all(a >= b for a, b in pairwise(curve)), curve
    sgd = {
        r["batch_size"]: float(r["steps"])
        for r in rows
        if r["family"] == "sgd" and r["target"] == "0.05"
    }
    for r in rows:
        if r["family"] == "momentum":
            assert float(r["steps"]) <= sgd[r["batch_size"]]

    # the figure table is exactly the records it plots (plus the lower bound)
    fig_rows = json.loads((figs / "steps_vs_batch_by_family.json").read_text())
    assert sorted(
        r["steps"] for r in fig_rows if r["family"] != "lower_bound"
    ) == sorted(j["steps"] for j in js if j["target"] == 0.05)

    # every point of the optimal-lr figure carries its range of optimal lrs
    lr_rows = json.loads((figs / "optimal_lr.json").read_text())
    assert lr_rows and all(
        r["lr_min"] <= r["lr"] <= r["lr_max"]
        and r["degenerate"] == (r["lr_max"] > DEGENERATE_RATIO * r["lr_min"])
        for r in lr_rows
    )
    assert (out / "optimal_lr_range.csv").is_file()

    cfg = json.loads((out / "config.json").read_text())
    assert (out / "config.toml").is_file()
    assert cfg["dim"] == 30 and cfg["families"] == ["sgd", "momentum"]
    assert cfg["batch_sizes"] == [1, 4, 16, 64]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == cfg
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["versions"]["torch"] == __import__("torch").__version__
    assert {"main_study", "figures", "total"} <= set(manifest["timings_s"])
    assert manifest["n_records"] == len(rows)


def test_subprocess_module_entry_point(tmp_path):
    """The module runs as a program; piped (no terminal), it prints one line per
    finished curve on stderr."""
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "analysis", "nqm-scaling", *TINY,
           "--families", "sgd,ema", "--out", str(out), "--no-figures"]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = _read_csv(out / "records.csv")
    steps = [float(r["steps"]) for r in rows if r["target"] == "0.05"]
    assert len(steps) == 8 and all(a >= b for a, b in pairwise(steps[:4]))
    assert (out / "manifest.json").is_file()
    lines = [m.groups() for m in re.finditer(
        r"^nqm-scaling: (\d+)/(\d+) curves, (.+) \(\d+ s\)$",
        proc.stderr, re.MULTILINE,
    )]  # fmt: skip
    # main study: sgd, ema at L* = 0.05; loss-threshold study: sgd at L* = 0.1
    assert sorted(label for _, _, label in lines) == [
        "ema p=0 L*=0.05", "sgd p=0 L*=0.05", "sgd p=0 L*=0.1"
    ]  # fmt: skip
    assert sorted((int(k), int(n)) for k, n, _ in lines) == [(1, 1), (1, 2), (2, 2)]
    assert "nqm-scaling done in" in proc.stderr


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--families", "sgd,adamw", "unknown family 'adamw'"),
        ("--targets", "0.1,0", "target"),
        ("--targets", "-1", "target"),
        ("--threshold-targets", "-0.5", "target"),
        ("--batch-sizes", "0,1,2", "batch size"),
        ("--batch-sizes", "1,2.5", "batch size"),
        ("--powers", "1.5", "precond power"),
        ("--dim", "zero", "dim"),
        ("--problem", "MISSING", "spectrum file"),
        ("--problem", "GARBAGE", "spectrum file"),
        ("--config", "MISSING", "config file"),
        ("--device", "no-such-device", "device must name a torch device"),
    ]
    + (
        []
        if __import__("torch").cuda.is_available()
        else [("--device", "cuda", "CUDA is not available")]
    ),
)
def test_bad_option_exits_2_with_one_line(tmp_path, capsys, option, value, needle):
    if value == "MISSING":
        value = str(tmp_path / "nothing_here.npz")
    elif value == "GARBAGE":
        path = tmp_path / "garbage.npz"
        path.write_bytes(b"this is not a zip archive")
        value = str(path)
    out = tmp_path / "res"
    code = main(["nqm-scaling", option, value, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert not (out / "records.csv").exists()


def test_spectrum_file_problem_runs(tmp_path):
    problem = nqm.NQMProblem.power_law(20)
    path = tmp_path / "spec.npz"
    problem.save(path)
    args = build_parser().parse_args(["nqm-scaling", "--problem", str(path)])
    cfg = config_from_args(args)
    assert cfg.problem == str(path)
    from analysis.scaling import build_problem

    np.testing.assert_array_equal(build_problem(cfg).h, problem.h)


def test_config_file_precedence(tmp_path):
    toml = tmp_path / "study.toml"
    toml.write_text(
        'dim = 123\nfamilies = ["sgd", "ema"]\nbatch_sizes = "2^1..2^3"\n'
        "targets = [0.2]\npowers = [0.5]\n"
    )
    parse = build_parser().parse_args
    # file over defaults
    cfg = config_from_args(parse(["nqm-scaling", "--config", str(toml)]))
    assert (cfg.dim, cfg.families, cfg.batch_sizes) == (123, ("sgd", "ema"), (2, 4, 8))
    assert cfg.targets == (0.2,) and cfg.powers == (0.5,)
    assert cfg.h_power == ScalingConfig().h_power
    # command line over file
    cfg = config_from_args(
        parse(
            [
                "nqm-scaling",
                "--config",
                str(toml),
                "--families",
                "momentum",
                "--dim",
                "7",
            ]
        )  # fmt: skip
    )
    assert (
        cfg.families == ("momentum",) and cfg.dim == 7 and cfg.batch_sizes == (2, 4, 8)
    )
    # file over --quick, quick over defaults
    cfg = config_from_args(parse(["nqm-scaling", "--quick", "--config", str(toml)]))
    assert (
        cfg.dim == 123 and cfg.shape_batch_sizes == QUICK_OVERRIDES["shape_batch_sizes"]
    )


def test_resolved_config_toml_round_trips(tmp_path):
    cfg = ScalingConfig(dim=77, targets=(0.2, 0.05), families=("ema",), powers=(0.25,),
                        batch_sizes=(1, 3, 9), problem=str(tmp_path / "s.npz"),
                        device="cpu:0")  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    args = build_parser().parse_args(["nqm-scaling", "--config", str(path)])
    assert config_from_args(args) == cfg


def test_config_file_unknown_key(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("dimension = 10\n")
    assert main(["nqm-scaling", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "dimension" in err and err.count("\n") == 1


def test_defaults_are_the_reference_study():
    cfg = config_from_args(build_parser().parse_args(["nqm-scaling"]))
    assert cfg == ScalingConfig()
    assert (cfg.dim, cfg.h_power, cfg.c_power, cfg.init_sq) == (10_000, 1.0, 1.0, 1.0)
    assert cfg.targets == (0.01,)
    assert cfg.batch_sizes == tuple(2**k for k in range(21))
    assert cfg.families == (
        "sgd",
        "momentum",
        "ema",
        "momentum_ema",
        "pwc",
        "linear_decay",
        "wsd",
        "cosine",
    )
    assert cfg.powers == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert (cfg.out, cfg.figures) == ("results/nqm-scaling", "figures")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,2,4", (1, 2, 4)),
        ("2^0..2^3", (1, 2, 4, 8)),
        ("3, 2^4..2^5", (3, 16, 32)),
        ("1e3", (1000,)),
    ],
)
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


def test_parse_batch_sizes_rejects_malformed():
    with pytest.raises(ValueError, match="batch size"):
        parse_batch_sizes("2^3..2^1")
    with pytest.raises(ValueError, match="batch size"):
        parse_batch_sizes("four")


def test_executor_options_reach_the_config(tmp_path, capsys, monkeypatch):
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["nqm-scaling", "--executor", "local"]))
    assert cfg.executor == "local" and cfg.ray_address is None
    cfg = config_from_args(
        parse(["nqm-scaling", "--executor", "ray", "--ray-address", "10.0.0.1:6379"])
    )
    assert (cfg.executor, cfg.ray_address) == ("ray", "10.0.0.1:6379")
    out = tmp_path / "res"
    for argv, needle in [
        (["--executor", "dask"], "executor must be one of local, ray"),
        (["--ray-address", "10.0.0.1:6379"], "ray_address needs executor = 'ray'"),
    ]:
        assert main(["nqm-scaling", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    assert main(["nqm-scaling", "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install .[ray]" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_rerun_after_a_kill_resumes_from_the_journal(tmp_path):
    """SIGKILL once a curve is journalled; the rerun finishes with the records
    of an uninterrupted run and removes the journal. A tampered entry in a copy
    of the killed run (its tuning time) shows up in that copy's records: the rerun read it rather
    than tuning again."""
    argv = [*TINY, "--families", "sgd,momentum", "--no-figures", "--workers", "1"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "analysis", "nqm-scaling", *argv, "--out", str(killed)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    journal = killed / ".journal"
    deadline = time.monotonic() + 120
    while not list(journal.glob("*.pkl")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no curve journalled in 120 s"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    entries = sorted(journal.glob("*.pkl"))
    if not entries:
        pytest.skip("the run finished before it could be killed")
    tampered = tmp_path / "tampered"
    shutil.copytree(killed, tampered)
    entry = tampered / ".journal" / entries[0].name
    out = pickle.loads(entry.read_bytes())
    for recs, _ in out:
        for r in recs:
            r["seconds"] = SENTINEL_SECONDS
    entry.write_bytes(pickle.dumps(out))

    fresh = tmp_path / "fresh"
    for d in (killed, tampered, fresh):
        assert main(["nqm-scaling", *argv, "--out", str(d)]) == 0
        assert not (d / ".journal").exists()

    def records(d):
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in _read_csv(d / "records.csv")]  # fmt: skip

    assert records(killed) == records(fresh)

    def seconds(d):
        return {float(r["seconds"]) for r in _read_csv(d / "records.csv")}

    assert SENTINEL_SECONDS in seconds(tampered)
    assert SENTINEL_SECONDS not in seconds(killed) | seconds(fresh)
