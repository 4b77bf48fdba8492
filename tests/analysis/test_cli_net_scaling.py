"""``python -m analysis net-scaling``: smoke run, outputs, and the error paths."""

import csv
import json
from pathlib import Path

import pytest

from analysis.__main__ import main

HERE = Path(__file__).resolve().parent

SMALL = [
    "--model",
    "netscale_workloads:small_mlp",
    "--data",
    "netscale_workloads:blobs",
    "--target",
    "0.6",
    "--optimizers",
    "sgd,adam",
    "--batch-sizes",
    "4,8,16",
    "--trials",
    "2",
    "--max-steps",
    "80",
    "--eval-every",
    "5",
    "--n-boot",
    "5",
    "--workers",
    "1",
]


def _run(tmp_path, *extra):
    out, fig = tmp_path / "out", tmp_path / "fig"
    code = main(
        ["net-scaling", *SMALL, "--out", str(out), "--figures", str(fig), *extra]
    )
    return code, out, fig


def test_smoke_run_writes_every_output(tmp_path):
    code, out, fig = _run(tmp_path, "--seeds", "2")
    assert code == 0
    lines = (out / "trials.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    for key in ("optimizer", "batch_size", "trial", "hparams", "status", "steps"):
        assert key in first
    assert len(first["curve"]) == len(first["curve_steps"])
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3
    assert list(rows[0])[:5] == [
        "optimizer",
        "batch_size",
        "steps",
        "trials",
        "feasible",
    ]
    assert any(k.startswith("hp_") for k in rows[0])
    assert all(r["trials"] == "2" for r in rows)
    with open(out / "critical_batch.csv") as f:
        crit = list(csv.DictReader(f))
    assert {r["optimizer"] for r in crit} == {"sgd", "adam"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["trials"] == 2 and "sweep" in manifest["timings_s"]
    for name in ("steps_vs_batch", "tuned_lr", "steps_by_threshold"):
        assert (fig / f"{name}.png").stat().st_size > 0
        assert (fig / f"{name}.csv").exists()
    # the saved config reproduces the sweep: a rerun with it trains nothing new
    assert main(["net-scaling", "--config", str(out / "config.toml")]) == 0
    assert (out / "trials.jsonl").read_text().splitlines() == lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizers", "sgd,lbfgs"], "lbfgs"),
        (["--batch-sizes", "0,4"], "batch size"),
        (["--batch-sizes", "4,x"], "batch size"),
        (["--batch-sizes", "4096"], "exceed"),
        (["--loss", "hinge"], "loss"),
        (["--metric", "accuracy"], "metric"),
        (["--target", "abc"], "target"),
        (["--trials", "0"], "trials"),
        (["--schedule", "cosine"], "schedule"),
        (["--model", "no_such_pkg_xyz:f"], "cannot import"),
        (["--data", "netscale_workloads:not_a_dataset"], "Dataset"),
        (["--data", "cifar10"], "data_dir"),
        (["--executor", "dask"], "executor"),
        (["--ray-address", "auto"], "ray_address"),
        (["--thresholds", "0.1"], "thresholds"),
        (["--config", "/no/such/file.toml"], "cannot read"),
    ],
)
def test_bad_options_exit_2_with_one_line_before_training(
    tmp_path, capsys, args, message
):
    code, out, _ = _run(tmp_path, *args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (out / "trials.jsonl").exists()


def test_another_sweep_in_the_same_out_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "--batch-sizes", "4")[0] == 0
    code, out, _ = _run(tmp_path, "--batch-sizes", "4", "--max-steps", "90")
    assert code == 2 and "max_steps" in capsys.readouterr().err


def test_quick_preset_and_toml_precedence(tmp_path):
    from analysis.netscale.config import QUICK_OVERRIDES, resolve_net_config

    cfg = resolve_net_config(quick=True)
    assert cfg.trials == QUICK_OVERRIDES["trials"]
    toml = tmp_path / "c.toml"
    toml.write_text('trials = 5\nbatch_sizes = "2^1..2^3"\noptimizers = ["kfac"]\n')
    cfg = resolve_net_config(quick=True, config_file=toml, overrides={"trials": 7})
    assert cfg.trials == 7 and cfg.batch_sizes == (2, 4, 8)
    assert [o.value for o in cfg.optimizers] == ["kfac"]
    (tmp_path / "bad.toml").write_text("trails = 5\n")
    with pytest.raises(ValueError, match="trails"):
        resolve_net_config(config_file=tmp_path / "bad.toml")
