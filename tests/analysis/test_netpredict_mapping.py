"""net-predict's mappings, comparisons and verdicts on hand-made inputs with
known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nqm
from analysis.netpredict.claims import (
    HELP_RATIO,
    NO_HELP_RATIO,
    Interval,
    Verdict,
    averaging_claim,
    combine,
    greater,
    judge_claims,
    momentum_claim,
    preconditioning_claim,
    target_claim,
)
from analysis.netpredict.compare import crossing_window, curve_comparison, ranking
from analysis.netpredict.mapping import (
    COUNTERPARTS,
    PredictedOptimizer,
    measured_label,
    nqm_optimizer,
    nqm_target,
    study_curves,
)
from analysis.netpredict.prediction import fit_b_crit, on_grid
from nqm import Family

P = PredictedOptimizer


# ---------------------------------------------------------------- target
def test_target_is_the_excess_over_the_floor():
    assert nqm_target(0.5, 0.125) == 0.375
    assert nqm_target(0.3, 0.0) == 0.3


@pytest.mark.parametrize("target,floor", [(0.4, 0.4), (0.3, 0.5), (math.nan, 0.1)])
def test_target_at_or_below_the_floor_is_refused(target, floor):
    with pytest.raises(ValueError, match="floor"):
        nqm_target(target, floor)


# ------------------------------------------------------------- optimizers
def test_optimizer_mapping_is_the_papers():
    expect = {
        P.SGD: (Family.SGD, 0.0),
        P.MOMENTUM: (Family.MOMENTUM, 0.0),
        P.EMA: (Family.EMA, 0.0),
        P.LINEAR_DECAY: (Family.LINEAR_DECAY, 0.0),
        P.KFAC: (Family.MOMENTUM, 1.0),
        P.ADAM: (Family.MOMENTUM, 0.5),
    }
    for label, (fam, p) in expect.items():
        assert (COUNTERPARTS[label].family, COUNTERPARTS[label].power) == (fam, p)
    assert COUNTERPARTS[P.ADAM].sensitivity == (0.25, 0.75)
    curves = study_curves([P.ADAM, P.SGD])
    assert curves == {
        (P.ADAM, 0.5): (Family.MOMENTUM, 0.5),
        (P.ADAM, 0.25): (Family.MOMENTUM, 0.25),
        (P.ADAM, 0.75): (Family.MOMENTUM, 0.75),
        (P.SGD, 0.0): (Family.SGD, 0.0),
    }


@pytest.mark.parametrize(
    "name,ema,schedule,label",
    [
        ("sgd", False, "constant", P.SGD),
        ("sgd", True, "constant", P.EMA),
        ("sgd", False, "linear_decay", P.LINEAR_DECAY),
        ("momentum", False, "constant", P.MOMENTUM),
        ("kfac", False, "constant", P.KFAC),
        ("adam", False, "constant", P.ADAM),
        ("nesterov", False, "constant", None),
        ("momentum", True, "constant", None),
        ("adam", False, "linear_decay", None),
    ],
)
def test_measured_label(name, ema, schedule, label):
    assert measured_label(name, ema, schedule) is label


def test_measured_hyperparameters_map_to_the_same_update():
    opt = nqm_optimizer(P.MOMENTUM, {"lr": 0.1, "one_minus_beta": 0.25})
    assert (opt.constant_lr, opt.momentum, opt.ema) == (0.1, 0.75, 0.0)
    opt = nqm_optimizer(P.EMA, {"lr": 0.3, "one_minus_gamma": 0.125})
    assert (opt.constant_lr, opt.momentum, opt.ema) == (0.3, 0.0, 0.875)
    assert nqm_optimizer(P.ADAM, {"lr": 1e-3}) is None
    assert nqm_optimizer(P.KFAC, {"lr": 1e-3}) is None


# ------------------------------------------------------------ comparisons
def test_grid_rounding():
    assert on_grid(0, 10, 95) == 0
    assert on_grid(31, 10, 95) == 40
    assert on_grid(91, 10, 95) == 95
    assert on_grid(96, 10, 95) == math.inf
    assert on_grid(math.inf, 10, 95) == math.inf


def test_fit_recovers_an_exact_curve():
    b = np.array([4.0, 8, 16, 32, 64])
    fit = fit_b_crit(b, 100 * (1 + 16 / b))
    assert fit["b_crit"] == pytest.approx(16, rel=1e-8)
    assert fit["s_min"] == pytest.approx(100, rel=1e-8)
    assert math.isnan(fit_b_crit(b, [math.inf, math.inf, 0, 2, 1])["b_crit"])


def test_curve_comparison_log_ratio_and_normalisation():
    rows = curve_comparison(
        [4, 8, 16], [200, 100, 50], 25, [8, 16, 32], [50, 50, 40], 40
    )
    assert [r["batch_size"] for r in rows] == [8, 16]
    assert rows[0]["log_ratio"] == pytest.approx(math.log(2))
    assert rows[1]["log_ratio"] == pytest.approx(0.0)
    assert (
        rows[0]["predicted_normalised"] == 4 and rows[0]["measured_normalised"] == 1.25
    )


def test_ranking_puts_fewest_steps_first_and_missing_last():
    steps = {"sgd": {8: 100, 64: 30}, "adam": {8: 60, 64: 10}, "kfac": {64: 20}}
    assert ranking(steps, 8) == ["adam", "sgd", "kfac"]
    assert ranking(steps, 64) == ["adam", "kfac", "sgd"]


def test_crossing_window():
    grid = [0, 1, 2, 3, 4, 5]
    expected = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2]
    se = [0.05] * 6
    # E - 2 se <= 0.45 first at step 3 (0.3); E + 2 se <= 0.45 first at 4 (0.4)
    assert crossing_window(grid, expected, se, 0.45, z=2.0) == (3.0, 4.0)
    assert crossing_window(grid, expected, se, 0.01, z=2.0) == (math.inf, math.inf)


# ---------------------------------------------------------------- verdicts
def iv(v, lo, hi):
    return Interval(v, lo, hi)


def test_greater_supported_contradicted_inconclusive():
    assert greater(iv(10, 8, 12), iv(5, 4, 7)) is Verdict.SUPPORTED
    assert greater(iv(5, 4, 7), iv(10, 8, 12)) is Verdict.CONTRADICTED
    assert greater(iv(9, 6, 12), iv(7, 5, 8)) is Verdict.INCONCLUSIVE
    assert greater(Interval.point(math.nan), iv(7, 5, 8)) is Verdict.INCONCLUSIVE
    assert greater(None, iv(7, 5, 8)) is Verdict.INCONCLUSIVE
    assert greater(Interval.point(3), Interval.point(2)) is Verdict.SUPPORTED


def test_combine():
    s, c, i = Verdict.SUPPORTED, Verdict.CONTRADICTED, Verdict.INCONCLUSIVE
    assert combine([s, s]) is s
    assert combine([s, i]) is i
    assert combine([s, c, i]) is c
    assert combine([]) is i


def test_a_contradicted_momentum_claim_is_reported_with_its_numbers():
    out = momentum_claim({"sgd": iv(64, 50, 80), "momentum": iv(20, 15, 30)})
    assert out["verdict"] == "contradicted"
    part = out["parts"][0]
    assert part["a"] == {"value": 20, "low": 15, "high": 30}
    assert part["b"] == {"value": 64, "low": 50, "high": 80}


def test_preconditioning_needs_every_measured_part():
    crit = {"momentum": iv(30, 25, 35), "kfac": iv(90, 70, 120), "adam": iv(40, 20, 60)}
    assert preconditioning_claim(crit)["verdict"] == "inconclusive"
    crit["adam"] = iv(60, 50, 70)
    assert preconditioning_claim(crit)["verdict"] == "supported"
    crit["adam"] = iv(10, 5, 20)
    assert preconditioning_claim(crit)["verdict"] == "contradicted"
    assert preconditioning_claim({"momentum": iv(1, 1, 1)})["verdict"] == "inconclusive"


def test_averaging_claim_thresholds():
    base = {8: 1000.0, 64: 200.0, 512: 100.0}
    helps_small = {8: 1000 / (HELP_RATIO + 0.1), 64: 150.0, 512: 100 / 1.0}
    out = averaging_claim({"sgd": base, "ema": helps_small})
    assert out["verdict"] == "supported"
    assert out["parts"][0]["speedup_small"] == pytest.approx(HELP_RATIO + 0.1)
    no_help = {8: 1000 / (NO_HELP_RATIO - 0.05), 64: 200.0, 512: 100.0}
    assert averaging_claim({"sgd": base, "ema": no_help})["verdict"] == "contradicted"
    helps_large = {8: 500.0, 64: 100.0, 512: 50.0}
    out = averaging_claim({"sgd": base, "linear_decay": helps_large})
    assert out["verdict"] == "contradicted"
    between = {8: 1000 / 1.2, 64: 200.0, 512: 100.0}
    assert averaging_claim({"sgd": base, "ema": between})["verdict"] == "inconclusive"
    assert averaging_claim({"sgd": base})["verdict"] == "inconclusive"


def test_target_claim_compares_lowest_with_highest_threshold():
    grows = {"sgd": {0.3: iv(100, 80, 120), 0.6: iv(30, 20, 40), 0.45: iv(1, 1, 1)}}
    assert target_claim(grows)["verdict"] == "supported"
    shrinks = {"sgd": {0.3: iv(10, 8, 12), 0.6: iv(30, 20, 40)}}
    out = target_claim({**grows, "adam": shrinks["sgd"]})
    assert out["verdict"] == "contradicted"
    assert len(out["parts"]) == 2


def test_judge_claims_returns_the_four_in_order():
    out = judge_claims({}, {}, {})
    assert [c["verdict"] for c in out] == ["inconclusive"] * 4
    assert "momentum" in out[0]["claim"] and "B_crit grows" in out[3]["claim"]


def test_first_passage_is_not_the_expected_crossing_near_a_flat_floor():
    """Why both quantities are predicted: with the target just above the
    steady-state loss, the mean crosses late (or never) but single runs cross
    early (an exact property of nqm, used by the report)."""
    import torch

    problem = nqm.NQMProblem.power_law(20)
    opt, b = nqm.Optimizer(lr=0.5), 2
    floor = float(nqm.steady_state_loss(problem, opt, b))
    target = 1.05 * floor
    t_mean = nqm.steps_to_target(problem, opt, b, target)
    tau = nqm.first_passage_steps(
        problem, opt, b, target, 4 * int(t_mean), 400, torch.Generator().manual_seed(0)
    )
    assert np.median(tau) < 0.7 * t_mean


def test_figures_draw_every_curve_of_a_hand_made_document():
    from analysis.netpredict.plots import (
        plot_b_crit_summary,
        plot_normalised_overlay,
        plot_steps_panels,
    )

    b = [16, 64, 256]
    doc = {
        "sgd": {
            "predicted": {"batch_sizes": b, "steps": [400, 120, math.inf],
                          "precond_power": 0.0, "s_min": 50.0, "sensitivity": {}},
            "measured": {"batch_sizes": b, "steps": [300, 90, 60], "s_min": 40.0},
        },
        "adam": {
            "predicted": {"batch_sizes": b, "steps": [200, 60, 30],
                          "precond_power": 0.5, "s_min": 20.0,
                          "sensitivity": {"0.25": {"steps": [250, 80, 40]},
                                          "0.75": {"steps": [150, 50, 25]}}},
            "measured": None,
        },
    }  # fmt: skip
    fig = plot_steps_panels(doc)
    sgd_ax, adam_ax = fig.axes
    assert [len(line.get_xdata()) for line in sgd_ax.lines] == [2, 3]  # inf dropped
    assert len(adam_ax.lines) == 3
    overlay = plot_normalised_overlay(doc).axes[0]
    assert sorted(len(line.get_ydata()) for line in overlay.lines) == [2, 3, 3]
    assert list(overlay.lines[1].get_ydata()) == [300 / 40, 90 / 40, 60 / 40]
    rows = [{"optimizer": "sgd", "predicted": 30.0, "measured": 20.0,
             "measured_low": 10.0, "measured_high": 40.0},
            {"optimizer": "adam", "predicted": 50.0, "measured": None}]  # fmt: skip
    ax = plot_b_crit_summary(rows).axes[0]
    assert ax.get_xscale() == "log" and len(ax.containers) == 1


def test_relative_target_mapping_keeps_the_fraction_of_the_way():
    from analysis.netpredict.mapping import TargetMap, TargetMapping

    rel = TargetMap(0.2, TargetMapping.RELATIVE, start_loss=2.2, nqm_initial_loss=0.5)
    # (0.7 - 0.2) / (2.2 - 0.2) = 1/4 of the way: a quarter of the NQM's start
    assert rel(0.7) == pytest.approx(0.125)
    assert rel.scale == pytest.approx(0.25)
    # an exact NQM (its start is the network's excess) maps as the excess does
    exact = TargetMap(0.2, TargetMapping.RELATIVE, start_loss=2.2, nqm_initial_loss=2.0)
    assert exact(0.7) == pytest.approx(TargetMap(0.2)(0.7)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="floor"):
        rel(0.2)
    with pytest.raises(ValueError, match="start loss"):
        TargetMap(0.2, TargetMapping.RELATIVE, start_loss=0.1, nqm_initial_loss=1.0)
    with pytest.raises(ValueError, match="relative needs"):
        TargetMap(0.2, TargetMapping.RELATIVE)
