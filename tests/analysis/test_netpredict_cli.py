"""``python -m analysis net-predict``: bad inputs stop with one line and exit 2
before any work; the reference-run path runs end to end and resumes."""

from __future__ import annotations

import json

import pytest

from analysis.__main__ import main

QUAD = [
    "--model", "netscale_workloads:quadratic_model",
    "--data", "netscale_workloads:quadratic_data",
    "--loss", "mse", "--metric", "test_loss",
]  # fmt: skip


def _fake_sweep(path, **identity):
    """A sweep folder as net-scaling writes it (identity and one trial)."""
    path.mkdir()
    ident = {
        "model": "netscale_workloads:quadratic_model",
        "data": "netscale_workloads:quadratic_data",
        "data_dir": None, "loss": "mse", "metric": "test_loss", "target": 0.5,
        "width": 0.125, "num_samples": 5000, "eval_size": 1000,
        "optimizers": ["sgd"], "ema": False, "schedule": "constant",
        "batch_sizes": [4, 16, 64], "trials": 1, "max_steps": 10, "eval_every": 1,
        "seed": 0,
    }  # fmt: skip
    ident.update(identity)
    (path / "sweep.json").write_text(json.dumps(ident))
    trial = {"optimizer": "sgd", "batch_size": 4, "trial": 0, "repeat": 0,
             "hparams": {"lr": 0.5}, "status": "budget", "steps": None,
             "metric": "test_loss", "target": 0.5, "curve_steps": [0],
             "curve": [1.0]}  # fmt: skip
    (path / "trials.jsonl").write_text(json.dumps(trial) + "\n")
    return path


def _bad(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    code = main(["net-predict", *argv, "--out", str(out),
                 "--figures", str(tmp_path / "fig")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() and not (tmp_path / "fig").exists()


def test_target_at_or_below_the_floor(capsys, tmp_path):
    _bad(capsys, tmp_path, [*QUAD, "--target", "0.3", "--floor", "0.3"], "floor")
    _bad(capsys, tmp_path, [*QUAD, "--target", "0.3", "--floor", "0.5"], "floor")


def test_sweep_of_another_workload(capsys, tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    argv = ["--target", "0.5", "--floor", "0", "--sweep", str(sweep)]
    _bad(capsys, tmp_path, argv, "measured another workload (model:")
    other = _fake_sweep(tmp_path / "sweep2", loss="ce")
    _bad(capsys, tmp_path, [*QUAD, *argv[:-1], str(other)], "loss: 'ce' there")


def test_target_below_the_sweeps(capsys, tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    argv = [*QUAD, "--target", "0.4", "--floor", "0", "--sweep", str(sweep)]
    _bad(capsys, tmp_path, argv, "below the sweep's target")


def test_missing_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"config": {}, "checkpoints": [{"step": 0}, {"step": 10}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    argv = ["--target", "2", "--run", str(run), "--checkpoints", "0,5"]
    _bad(capsys, tmp_path, argv, "step(s) [5] not collected")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--predict", "sgd,lamb"], "unknown optimizer 'lamb'"),
        ([*QUAD, "--target", "0.5", "--problem", "x.npz"], "needs --floor"),
        (
            [*QUAD, "--target", "0.5", "--floor", "0", "--problem", "no.npz"],
            "does not exist",
        ),
        (
            [*QUAD, "--target", "0.5", "--floor", "0", "--problem", "."],
            "'.' is a directory",
        ),
        (["--checkpoints", "0,a"], "checkpoints"),
        (["--target", "0.5", "--thresholds", "0.4"], "thresholds"),
        (["--batch-sizes", "4,8"], "at least 3"),
        ([*QUAD, "--target", "0.5"], "reference run trains the built-in"),
        (["--target-mapping", "ratio"], "unknown 'ratio'"),
        (
            [
                *QUAD,
                "--target",
                "0.5",
                "--floor",
                "0",
                "--problem",
                "x.npz",
                "--target-mapping",
                "relative",
            ],
            "relative needs a reference run",
        ),
    ],
)
def test_bad_options(capsys, tmp_path, argv, match):
    _bad(capsys, tmp_path, argv, match)


REFERENCE = [
    "--config", "CONFIG", "--target", "2.0", "--predict", "sgd",
    "--batch-sizes", "16,64,256", "--checkpoints", "0,10",
    "--reference-steps", "20", "--no-figures",
]  # fmt: skip


def test_reference_run_path_end_to_end_and_resumes(tmp_path):
    config = tmp_path / "workload.toml"
    config.write_text("num_samples = 400\neval_size = 100\nwidth = 0.125\n")
    argv = [a if a != "CONFIG" else str(config) for a in REFERENCE]
    out = tmp_path / "out"
    assert main(["net-predict", *argv, "--out", str(out)]) == 0
    doc = json.loads((out / "prediction.json").read_text())
    assert set(doc["checkpoints"]) == {"0", "10"}
    assert doc["primary_checkpoint"] == 0
    run = json.loads((out / "reference" / "manifest.json").read_text())
    assert run["complete"] and [c["step"] for c in run["checkpoints"]] == [0, 10, 20]
    assert doc["estimates"]["0"]["final_step"] == 20
    assert doc["estimates"]["0"]["modes"] > 0
    t = doc["target"]
    assert t["nqm_target"] == pytest.approx(2.0 - t["floor"])
    assert 0 < t["floor"] < 2.0 and "reference run" in t["floor_source"]
    md = (out / "prediction.md").read_text()
    for step in ("0", "10"):
        est, nqm_t = doc["estimates"][step], doc["checkpoints"][step]["nqm_target"]
        below = est["nqm_initial_loss"] <= nqm_t
        assert (f"Checkpoint {step}: the estimated NQM starts" in md) is below
        # a rerun finds the finished reference run and predicts the same
    assert main(["net-predict", *argv, "--out", str(out)]) == 0
    again = json.loads((out / "prediction.json").read_text())
    assert again["target"] == doc["target"]
    assert again["optimizers"] == doc["optimizers"]
    # the relative mapping starts each checkpoint's NQM where the run was
    rel_out = tmp_path / "relative"
    run_dir = str(out / "reference")
    assert main(["net-predict", *argv, "--run", run_dir, "--target-mapping",
                 "relative", "--out", str(rel_out)]) == 0  # fmt: skip
    rel = json.loads((rel_out / "prediction.json").read_text())
    # the NQM study's journal (kept for a resume after a kill) goes at the end
    assert not (out / ".journal").exists() and not (rel_out / ".journal").exists()
    start = {c["step"]: c["measure_loss"] for c in run["checkpoints"]}
    for step in ("0", "10"):
        nqm0 = rel["estimates"][step]["nqm_initial_loss"]
        expect = nqm0 * (2.0 - t["floor"]) / (start[int(step)] - t["floor"])
        assert rel["checkpoints"][step]["nqm_target"] == pytest.approx(expect)
    assert rel["target"]["mapping"] == "relative"
