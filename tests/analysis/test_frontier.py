"""Frontier tables of nqm-scaling (analysis.frontier), their figures, and their
configuration fields."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nqm
from analysis import plots
from analysis.config import resolve_config
from analysis.frontier import (
    adam_proxy_rows,
    critical_batch_rows,
    ramp_rows,
    tradeoff_rows,
)

#: a curve that follows the model exactly is placed on the hyperbola to rounding
RTOL_EXACT = 1e-8


def test_tradeoff_rows_place_a_model_curve_on_the_hyperbola():
    bs = 2.0 ** np.arange(12)
    steps = 40.0 * (1.0 + 100.0 / bs)
    records = [
        {"family": "sgd", "precond_power": 0.0, "target": 0.1, "batch_size": b,
         "steps": s}
        for b, s in zip(bs, steps, strict=True)
    ] + [  # a curve with too few finite points is left out
        {"family": "ema", "precond_power": 0.0, "target": 0.1, "batch_size": b,
         "steps": math.inf}
        for b in bs
    ]  # fmt: skip
    rows = tradeoff_rows(records)
    assert {r["family"] for r in rows} == {"sgd"}
    for r in rows:
        assert r["excess_steps"] == pytest.approx(r["hyperbola"], rel=RTOL_EXACT)
        assert r["examples"] == r["batch_size"] * r["steps"]
    assert rows[0]["hyperbola_log_rmse"] < RTOL_EXACT


def test_critical_batch_and_ramp_rows_and_figures():
    problem = nqm.NQMProblem.power_law(30)
    l0 = problem.initial_loss()
    bs = [1, 4, 16, 64, 256, 1024]
    crit = critical_batch_rows(problem, ["sgd"], [0.1 * l0, 0.3 * l0], bs)
    assert [r["target"] for r in crit] == [0.3 * l0, 0.1 * l0]
    assert crit[1]["b_crit"] > crit[0]["b_crit"]
    ramp = ramp_rows(problem, 0.1 * l0, [1.5, 4.0], bs)
    assert [r["budget_multiple"] for r in ramp] == [1.5, 4.0]
    for r in ramp:
        assert r["ramp_examples"] <= r["examples_budget"]
        assert r["constant_examples"] <= r["examples_budget"]
        assert r["ramp_steps"] <= r["constant_steps"]
        assert r["saving"] == pytest.approx(1 - r["ramp_steps"] / r["constant_steps"])
    for name, rows in (("critical_batch_vs_target", crit), ("batch_ramp", ramp),
                       ("steps_examples_tradeoff", [])):  # fmt: skip
        fig = plots.FIGURES[name](rows)
        assert fig.axes


def test_config_fields():
    cfg = resolve_config(overrides={"bcrit_targets": "", "ramp_budgets": "2,4"})
    assert cfg.bcrit_targets == () and cfg.ramp_budgets == (2.0, 4.0)
    with pytest.raises(ValueError, match="ramp_budgets"):
        resolve_config(overrides={"ramp_budgets": "0.5"})
    with pytest.raises(ValueError, match="unknown family"):
        resolve_config(overrides={"bcrit_families": "adamw"})
    with pytest.raises(ValueError, match="ramp_pieces"):
        resolve_config(overrides={"ramp_pieces": 0})


def test_adam_proxy_rows():
    """Adam in its SGD limit (huge eps) beside the exact proxies: the rows hold
    every power (p = 0 added), and Adam's interval holds its tuned setting's
    exact steps as SGD with lr alpha / eps."""
    problem = nqm.NQMProblem.power_law(8)
    target = 0.2 * problem.initial_loss()
    eps = 1e6
    rows = adam_proxy_rows(
        problem, target, [1.0, 16.0], powers=(0.5,), max_steps=200,
        lrs=eps * np.geomspace(0.1, 1.5, 6), beta1s=(0.0,), eps=eps, replicas=32,
        confirm_replicas=1000, refine=0, device="cpu",
    )  # fmt: skip
    powers = {r["precond_power"] for r in rows if r["optimizer"] == "momentum"}
    assert powers == {0.0, 0.5}
    for r in (r for r in rows if r["optimizer"] == "adam"):
        exact = nqm.steps_to_target(
            problem, nqm.Optimizer(r["lr"] / eps), r["batch_size"], target
        )
        assert r["ci_low"] <= exact <= r["ci_high"]
