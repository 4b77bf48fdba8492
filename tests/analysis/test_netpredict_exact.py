"""net-predict end to end on the exact workload: the NQM written as a network.

The network's mini-batch gradient is exactly H theta + eps with eps ~ N(0, C/B)
(:mod:`analysis.netscale.quadratic`), and its ``test_loss`` is the NQM's loss,
so the floor is 0 and the NQM is known. Here, and only here, the prediction must
agree with the measurement within the measurement's Monte-Carlo error:

* the K-seed mean curve's crossing lies in the window where the predicted
  expected loss is within ``MEAN_Z`` standard errors of the target, and the
  single-run crossings pass a KS test against the predicted first-passage law,
  at every batch size;
* the critical batch sizes of the predicted expected-loss crossings and of the
  predicted first-passage medians lie in the seed-bootstrap intervals of the
  measured ones.

The measurement is real torch training through ``python -m analysis
net-scaling`` -- independent of the NQM code that makes the prediction. A
prediction from a wrong problem (noise 8x too large) must fail the same checks:
the test has power.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from netscale_workloads import QUAD_PROBLEM

import nqm
from analysis.__main__ import main

WORKLOAD = [
    "--model", "netscale_workloads:quadratic_model",
    "--data", "netscale_workloads:quadratic_data",
    "--loss", "mse", "--metric", "test_loss", "--target", "0.5",
]  # fmt: skip
SWEEP = [
    "--optimizers", "sgd", "--batch-sizes", "4,16,64", "--trials", "2",
    "--max-steps", "100", "--eval-every", "1", "--seeds", "16",
    "--n-boot", "20", "--workers", "1", "--no-figures",
]  # fmt: skip
PREDICT = ["--floor", "0", "--predict", "sgd", "--replicas", "1000",
           "--n-boot", "200", "--thresholds", "1.0"]  # fmt: skip
#: How much noisier the wrong problem of the power check is.
WRONG_NOISE = 8.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    out = root / "sweep"
    assert main(["net-scaling", *WORKLOAD, *SWEEP, "--out", str(out)]) == 0
    return root, out


def _predict(root, sweep_dir, problem, name):
    path = root / f"{name}.npz"
    problem.save(path)
    out, fig = root / name, root / f"{name}_fig"
    code = main(
        ["net-predict", *WORKLOAD, *PREDICT, "--problem", str(path),
         "--sweep", str(sweep_dir), "--out", str(out), "--figures", str(fig)]
    )  # fmt: skip
    assert code == 0
    return json.loads((out / "prediction.json").read_text()), out, fig


def test_prediction_agrees_with_the_measurement_within_its_mc_error(sweep):
    root, sweep_dir = sweep
    doc, out, fig = _predict(root, sweep_dir, QUAD_PROBLEM, "true")
    settings = doc["optimizers"]["sgd"]["settings"]
    assert [p["batch_size"] for p in settings["points"]] == [4, 16, 64]
    for p in settings["points"]:
        assert p["seeds"] == 16
        assert p["mean_agrees"], p
        assert p["single_agrees"], p
        # the predicted crossing is the exact one of the measured setting
        opt = nqm.Optimizer(lr=p["hparams"]["lr"])
        exact = nqm.steps_to_target(QUAD_PROBLEM, opt, p["batch_size"], 0.5)
        assert p["predicted_crossing"] == exact
    for kind in ("mean", "median"):
        assert settings["b_crit"][kind]["agrees"], settings["b_crit"]
    # what was written
    assert doc["target"] == {
        "network_target": 0.5, "floor": 0.0, "floor_source": "user (--floor)",
        "nqm_target": 0.5, "thresholds": [0.5, 1.0], "mapping": "excess",
        "scale": 1.0,
    }  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "prediction.json", "prediction.md", "steps.csv", "b_crit.csv"
    }  # fmt: skip
    assert (fig / "steps_vs_batch.png").is_file()
    assert (fig / "b_crit_predicted_vs_measured.png").is_file()
    assert (fig / "steps_over_s_min.png").is_file()
    assert "supported" in (out / "prediction.md").read_text()


def test_a_wrong_problem_is_caught(sweep):
    root, sweep_dir = sweep
    wrong = nqm.NQMProblem(
        h=np.array(QUAD_PROBLEM.h),
        c=WRONG_NOISE * np.array(QUAD_PROBLEM.c),
        init_sq=np.array(QUAD_PROBLEM.init_sq),
    )
    doc, _, _ = _predict(root, sweep_dir, wrong, "wrong")
    settings = doc["optimizers"]["sgd"]["settings"]
    flags = [p["mean_agrees"] and p["single_agrees"] for p in settings["points"]]
    flags += [v["agrees"] for v in settings["b_crit"].values()]
    assert not all(flags)
