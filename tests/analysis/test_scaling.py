"""Tests of the study layer (analysis.scaling).

Oracles: the exact expected loss (``nqm.expected_loss``) checked directly at the
reported step and the one before it; a brute-force scan of the Bayes lower bound;
closed forms of one-mode SGD and an explicit heavy-ball recursion for E.3; the
ordering properties every exact tuner must satisfy (steps non-increasing in B,
families that contain SGD never slower than SGD).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from itertools import pairwise

import numpy as np
import pytest

import nqm
from analysis import scaling
from analysis.config import ScalingConfig
from analysis.journal import ResultJournal
from nqm.search import Family, TuneResult, best_steps

#: Tiny problem shared by the property tests (d = 30, h_i = c_i = 1/i).
DIM = 30
TARGET = 0.05
BATCH_SIZES = (1, 4, 16, 64, 256)
FAST_FAMILIES = ("sgd", "momentum", "ema", "pwc")
#: Relative tolerance of float64 closed forms vs recursions.
RTOL = 1e-9
#: E.3: at 1 - beta = 0.5 momentum and SGD at the effective lr nearly coincide.
TRANSIENT_MATCH_ATOL = 0.02


@pytest.fixture(scope="module")
def problem() -> nqm.NQMProblem:
    return nqm.NQMProblem.power_law(DIM)


@pytest.fixture(scope="module")
def study(problem) -> list[dict]:
    return scaling.run_study(
        problem, FAST_FAMILIES, [0.0, 1.0], BATCH_SIZES, [TARGET], progress=False
    )


def _curve(records, family, power):
    rs = [r for r in records if r["family"] == family and r["precond_power"] == power]
    return [r["steps"] for r in sorted(rs, key=lambda r: r["batch_size"])]


def _optimizer(rec) -> nqm.Optimizer:
    if rec["schedule"] == scaling.ScheduleKind.CONSTANT:
        lr = rec["lr"]
    elif rec["schedule"] == scaling.ScheduleKind.PIECEWISE_CONSTANT:
        lr = nqm.PiecewiseConstant(tuple(rec["boundaries"]), tuple(rec["values"]))
    else:
        lr = nqm.LinearDecay(rec["lr0"], rec["decay"], rec["horizon"])
    return nqm.Optimizer(lr, rec["momentum"], rec["ema"], rec["precond_power"])


# ------------------------------------------------------------ study records
def test_study_grid_is_complete(study):
    keys = {(r["family"], r["precond_power"], r["batch_size"]) for r in study}
    assert len(study) == len(keys) == len(FAST_FAMILIES) * 2 * len(BATCH_SIZES)
    assert all(set(r) == set(scaling.RECORD_COLUMNS) for r in study)


def test_steps_non_increasing_in_batch_size(study):
    # A fixed optimizer's loss D + N/B falls with B, so the tuned optimum cannot
    # need more steps at a larger batch.
    for fam in FAST_FAMILIES:
        for p in (0.0, 1.0):
            steps = _curve(study, fam, p)
            assert all(math.isfinite(s) for s in steps), (fam, p, steps)
            assert all(a >= b for a, b in pairwise(steps)), (fam, p, steps)


def test_families_containing_sgd_are_never_slower(study):
    for fam in FAST_FAMILIES[1:]:
        for p in (0.0, 1.0):
            sgd = _curve(study, "sgd", p)
            other = _curve(study, fam, p)
            assert all(o <= s for o, s in zip(other, sgd, strict=True)), (fam, p)


def test_reported_steps_are_exact_first_crossings(study, problem):
    # Independent of the tuner: the exact loss of the reported optimizer is at or
    # below target at `steps` and above it one step earlier.
    for rec in study:
        opt = _optimizer(rec)
        s = rec["steps"]
        loss = nqm.expected_loss(problem, opt, rec["batch_size"], [s - 1, s])
        assert loss[1] <= TARGET, rec
        assert loss[0] > TARGET, rec


def test_tuned_hyperparameters_are_consistent(study):
    for rec in study:
        if rec["schedule"] == scaling.ScheduleKind.CONSTANT:
            assert rec["effective_lr"] == pytest.approx(
                rec["lr"] / (1.0 - rec["momentum"]), rel=RTOL
            )
            assert rec["lr0"] == rec["final_lr"] == rec["lr"]
        if rec["family"] == "sgd":
            assert rec["momentum"] == 0.0 and rec["ema"] == 0.0
        if rec["family"] == "pwc" and rec["schedule"] == "piecewise_constant":
            assert rec["final_lr"] == rec["values"][-1]
            assert len(rec["values"]) == len(rec["boundaries"]) + 1


@pytest.mark.slow
def test_every_family_ordering_properties(problem):
    fams = [f.value for f in Family]
    recs = scaling.run_study(
        problem, fams, [0.5], BATCH_SIZES, [TARGET], progress=False
    )
    for fam in fams:
        steps = _curve(recs, fam, 0.5)
        assert all(a >= b for a, b in pairwise(steps)), (fam, steps)
        assert all(
            o <= s for o, s in zip(steps, _curve(recs, "sgd", 0.5), strict=True)
        ), fam


def test_run_study_rejects_bad_inputs(problem):
    with pytest.raises(ValueError, match="target"):
        scaling.run_study(problem, ["sgd"], [0.0], [1], [0.0], progress=False)
    with pytest.raises(ValueError, match="batch size"):
        scaling.run_study(problem, ["sgd"], [0.0], [0], [0.1], progress=False)
    with pytest.raises(ValueError, match="nope"):
        scaling.run_study(problem, ["nope"], [0.0], [1], [0.1], progress=False)


# ----------------------------------------------------------- tune_record
@pytest.mark.parametrize(
    ("lr", "momentum", "expected"),
    [
        (0.3, 0.9, {"schedule": "constant", "lr": 0.3, "effective_lr": 3.0}),
        (
            nqm.PiecewiseConstant((5, 9), (1.0, 0.5, 0.1)),
            0.0,
            {"schedule": "piecewise_constant", "lr0": 1.0, "final_lr": 0.1},
        ),
        (
            nqm.LinearDecay(2.0, 0.25, 40),
            0.0,
            {"schedule": "linear_decay", "lr0": 2.0, "final_lr": 0.5, "horizon": 40},
        ),
    ],
)
def test_tune_record_flattens_each_schedule(lr, momentum, expected):
    res = TuneResult(
        steps=17,
        optimizer=nqm.Optimizer(lr, momentum=momentum),
        family=Family.MOMENTUM,
        batch_size=8.0,
        precond_power=0.25,
        target=0.1,
        evaluations=123,
    )
    rec = scaling.tune_record(res, seconds=0.5)
    for k, v in expected.items():
        assert (
            rec[k] == pytest.approx(v, rel=RTOL)
            if isinstance(v, float)
            else rec[k] == v
        )
    assert rec["family"] == "momentum" and rec["batch_size"] == 8
    assert rec["steps"] == 17 and rec["evaluations"] == 123


def test_tune_record_without_optimizer_keeps_infinite_steps():
    res = TuneResult(math.inf, None, Family.SGD, 1.0, 0.0, 1e-9, 5)
    rec = scaling.tune_record(res)
    assert rec["steps"] == math.inf and rec["lr"] is None


# ------------------------------------------------------------- lower bound
def _brute_lower_bound(problem, target, batch_size, t_max=200_000):
    t = np.arange(1, t_max + 1, dtype=np.float64)
    n = batch_size * t[:, None]
    h, c, init = problem.h, problem.c, problem.init_sq
    loss = 0.5 * np.sum(h / (1.0 / init + n * h**2 / c), axis=1)
    hit = np.nonzero(loss <= target)[0]
    return int(t[hit[0]]) if hit.size else math.inf


def test_lower_bound_matches_brute_force_and_bounds_tuned_steps(problem, study):
    rows = scaling.lower_bound_curve(problem, [TARGET, 0.1], BATCH_SIZES)
    assert len(rows) == 2 * len(BATCH_SIZES)
    for r in rows:
        assert r["steps"] == _brute_lower_bound(problem, r["target"], r["batch_size"])
    bound = {r["batch_size"]: r["steps"] for r in rows if r["target"] == TARGET}
    for rec in study:
        assert bound[rec["batch_size"]] <= rec["steps"], rec


# ------------------------------------------------------------------- fits
def test_critical_batch_fits_recover_an_exact_hyperbola():
    s_min, b_crit = 50.0, 64.0
    bs = [2**k for k in range(12)]
    recs = [
        {
            "family": "sgd",
            "precond_power": 0.0,
            "target": 0.1,
            "batch_size": b,
            "steps": s_min * (1 + b_crit / b),
        }
        for b in bs
    ]
    recs += [
        {
            "family": "ema",
            "precond_power": 0.0,
            "target": 0.1,
            "batch_size": b,
            "steps": math.inf if b > 2 else 10.0,
        }
        for b in bs
    ]
    fits = {r["family"]: r for r in scaling.critical_batch_fits(recs)}
    assert fits["sgd"]["n_points"] == len(bs)
    assert fits["sgd"]["s_min"] == pytest.approx(s_min, rel=1e-3)
    assert fits["sgd"]["b_crit"] == pytest.approx(b_crit, rel=1e-3)
    assert fits["ema"]["n_points"] == 2 and fits["ema"]["b_crit"] is None


# --------------------------------------------------------------- E.3
def _heavy_ball_mean(alpha, beta, t_max):
    theta, m = 1.0, 0.0
    out = [theta]
    for _ in range(t_max):
        m = beta * m + theta  # h = 1, no noise
        theta = theta - alpha * m
        out.append(theta)
    return np.array(out)


def test_momentum_transient_against_recursion_and_closed_form():
    alpha_h = 0.005
    rows = scaling.momentum_transient(alpha_h, (0.5, 0.05))
    for omb in (0.5, 0.05):
        mine = [r for r in rows if r["one_minus_beta"] == omb]
        mom = {
            r["step"]: r["normalised_risk"] for r in mine if r["update"] == "momentum"
        }
        sgd = {
            r["step"]: r["normalised_risk"]
            for r in mine
            if r["update"] == "sgd_effective_lr"
        }
        assert set(mom) == set(sgd) and 0 in mom
        steps = np.array(sorted(mom))
        mean = _heavy_ball_mean(alpha_h, 1.0 - omb, int(steps[-1]))
        np.testing.assert_allclose(
            [mom[t] for t in steps], mean[steps] ** 2, rtol=1e-8, atol=1e-14
        )
        eff = alpha_h / omb
        np.testing.assert_allclose(
            [sgd[t] for t in steps], (1.0 - eff) ** (2 * steps), rtol=1e-8, atol=1e-14
        )
        assert mom[0] == pytest.approx(1.0) and mom[steps[-1]] < 1e-2
    close = [r for r in rows if r["one_minus_beta"] == 0.5]
    by_step: dict = {}
    for r in close:
        by_step.setdefault(r["step"], {})[r["update"]] = r["normalised_risk"]
    gap = max(abs(v["momentum"] - v["sgd_effective_lr"]) for v in by_step.values())
    assert gap < TRANSIENT_MATCH_ATOL


def test_momentum_transient_rejects_bad_values():
    with pytest.raises(ValueError, match="alpha_h"):
        scaling.momentum_transient(1.5)
    with pytest.raises(ValueError, match="one_minus_beta"):
        scaling.momentum_transient(0.001, (0.0,))


# ------------------------------------------------------- schedule shapes
def test_schedule_shapes_evaluate_the_tuned_schedule():
    pwc = {
        "family": "pwc",
        "precond_power": 0.0,
        "target": 0.1,
        "schedule": "piecewise_constant",
        "boundaries": [10, 30],
        "values": [1.0, 0.5, 0.2],
    }
    recs = [dict(pwc, batch_size=b, steps=s) for b, s in ((1, 60), (4, 40), (16, 20))]
    recs.append(dict(pwc, batch_size=64, steps=math.inf))
    rows = scaling.schedule_shapes(recs, n_batch_sizes=2)
    assert {r["batch_size"] for r in rows} == {1, 16}  # ends of the finite range
    for r in rows:
        expected = 1.0 if r["step"] < 10 else 0.5 if r["step"] < 30 else 0.2
        assert r["lr"] == expected and r["relative_lr"] == expected
        assert 0 <= r["normalised_step"] < 1
        assert r["normalised_step"] == r["step"] / r["steps"]


# ----------------------------------------------------------------- problem
def test_build_problem_power_law_and_file(tmp_path):
    cfg = ScalingConfig(dim=7, h_power=2.0, c_power=0.5, init_sq=3.0)
    p = scaling.build_problem(cfg)
    i = np.arange(1, 8.0)
    np.testing.assert_allclose(p.h, i**-2.0)
    np.testing.assert_allclose(p.c, i**-0.5)
    np.testing.assert_allclose(p.init_sq, 3.0)
    path = tmp_path / "spec.npz"
    np.savez(path, h=np.array([1.0, 0.1]), c=np.array([0.5, 0.05]))
    q = scaling.build_problem(ScalingConfig(problem=str(path)))
    np.testing.assert_allclose(q.h, [1.0, 0.1])
    with pytest.raises(ValueError, match="does not exist"):
        scaling.build_problem(ScalingConfig(problem=str(tmp_path / "missing.npz")))


def test_write_study_writes_every_table(tmp_path, study, problem):
    res = scaling.StudyResult(
        records=study[:3],
        fits=scaling.critical_batch_fits(study),
        lower_bound=scaling.lower_bound_curve(problem, [TARGET], [1, 2]),
        extras={"momentum_transient": scaling.momentum_transient(0.01, (0.5,))},
        timings={"main_study": 1.0},
    )
    paths = scaling.write_study(res, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            f"{s}.{e}"
            for s in ("records", "critical_batch", "lower_bound", "momentum_transient")
            for e in ("csv", "json")
        ]
        + ["timings.json"]
    )
    back = json.loads((tmp_path / "records.json").read_text())
    assert [r["steps"] for r in back] == [r["steps"] for r in study[:3]]


def test_bad_worker_counts_are_rejected():
    # (parallel records equal serial ones: test_shared_sgd_baseline_...)
    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["sgd"], powers=[0.0, 1.0], batch_sizes=[1, 8, 64],
                  targets=[0.1], progress=False)  # fmt: skip
    for workers in (-1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            scaling.run_study(small, workers=workers, **kwargs)


def test_shared_sgd_baseline_matches_per_curve_tuning():
    """SGD tuned once per (power, target) and shared equals, or improves on, each
    family tuning its own baseline; SGD records are unchanged; parallel runs
    (baselines arriving out of order) agree with serial ones."""
    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["sgd", "momentum", "ema", "momentum_ema", "pwc",
                            "linear_decay"],
                  powers=[0.0, 0.5], batch_sizes=[1, 8, 64], targets=[0.1],
                  progress=False)  # fmt: skip

    def own_baseline(*args, **kw):  # not best_steps itself: nothing is shared
        return best_steps(*args, **kw)

    shared = scaling.run_study(small, workers=1, **kwargs)
    alone = scaling.run_study(small, workers=1, search=own_baseline, **kwargs)
    parallel = scaling.run_study(small, workers=2, **kwargs)
    assert len(shared) == len(alone) == len(parallel) == 6 * 2 * 3
    # momentum_ema waited for, and contains, the momentum and ema curves
    steps = {(r["family"], r["precond_power"], r["batch_size"]): r["steps"]
             for r in shared}  # fmt: skip
    for (fam, p, b), s in steps.items():
        if fam == "momentum_ema":
            assert s <= min(steps[("momentum", p, b)], steps[("ema", p, b)])
    for a, b, c in zip(shared, alone, parallel, strict=True):
        key = [(r["family"], r["precond_power"], r["batch_size"]) for r in (a, b, c)]
        assert key[0] == key[1] == key[2]
        assert a["steps"] <= b["steps"]
        # parallel (baselines arriving out of order) = serial, every column
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in c.items() if k != "seconds"
        }
        if a["family"] == "sgd":
            assert a["steps"] == b["steps"]
    sgd = {(r["precond_power"], r["batch_size"]): r["steps"] for r in shared
           if r["family"] == "sgd"}  # fmt: skip
    for r in shared:
        assert r["steps"] <= sgd[(r["precond_power"], r["batch_size"])]


def _fpt(curve):
    """A plan's curve as (family value, powers, target), for hand-written plans."""
    return (curve.family.value, curve.powers, curve.target)


def test_plan_tunes_baselines_first_and_hands_them_on():
    small = nqm.NQMProblem.power_law(5)
    every = ["sgd", "momentum", "ema", "momentum_ema", "pwc", "linear_decay"]
    plan = scaling.plan_study(small, every, [0.0, 0.5], [1, 8], [0.1, 0.2])
    order = [_fpt(t.key) for t in plan.tasks]
    needs = {_fpt(t.key): {_fpt(k) for k in t.needs} for t in plan.tasks}
    sgd = {(p, t): ("sgd", (p,), t) for p in (0.0, 0.5) for t in (0.1, 0.2)}
    # SGD once per (power, target), first; the schedules tune both powers at once
    assert order[:4] == [sgd[(0.0, 0.1)], sgd[(0.0, 0.2)], sgd[(0.5, 0.1)],
                         sgd[(0.5, 0.2)]]  # fmt: skip
    assert len(order) == len(set(order)) == 4 + 3 * 4 + 2 * 2
    for t in (0.1, 0.2):
        for p in (0.0, 0.5):
            assert needs[sgd[(p, t)]] == set()
            for fam in ("momentum", "ema"):
                assert needs[(fam, (p,), t)] == {sgd[(p, t)]}
            # momentum_ema contains momentum and ema (and, through them, SGD)
            assert needs[("momentum_ema", (p,), t)] == {
                sgd[(p, t)], ("momentum", (p,), t), ("ema", (p,), t)
            }  # fmt: skip
        for fam in ("pwc", "linear_decay"):
            assert needs[(fam, (0.0, 0.5), t)] == {sgd[(0.0, t)], sgd[(0.5, t)]}
    for i, curve in enumerate(order):  # what a curve needs is planned before it
        assert needs[curve] <= set(order[:i])
    assert plan.reported == tuple(
        (scaling.Family(f), p, t) for f in every for p in (0.0, 0.5) for t in (0.1, 0.2)
    )


def test_plan_without_shared_baselines_has_no_needs():
    small = nqm.NQMProblem.power_law(5)
    # momentum_ema without momentum and ema in the study: only SGD is handed on
    plan = scaling.plan_study(small, ["momentum_ema"], [1.0], [1], [0.1])
    assert [(_fpt(t.key), [_fpt(k) for k in t.needs]) for t in plan.tasks] == [
        (("sgd", (1.0,), 0.1), []),
        (("momentum_ema", (1.0,), 0.1), [("sgd", (1.0,), 0.1)]),
    ]
    assert plan.reported == ((scaling.Family.MOMENTUM_EMA, 1.0, 0.1),)
    for kwargs in ({"search": _failing_above_8}, {"fixed_momentum": 0.9}):
        plan = scaling.plan_study(small, ["sgd", "momentum"], [0.0, 1.0], [1],
                                  [0.1], **kwargs)  # fmt: skip
        assert all(t.needs == () for t in plan.tasks)
        assert [_fpt(t.key)[0] for t in plan.tasks] == ["momentum"] * 2 + ["sgd"] * 2


@pytest.mark.slow
def test_ray_executor_gives_identical_records():
    pytest.importorskip("ray")
    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["sgd", "momentum", "ema", "momentum_ema", "pwc"],
                  powers=[0.0, 0.5], batch_sizes=[1, 8, 64], targets=[0.1],
                  progress=False)  # fmt: skip
    local = scaling.run_study(small, workers=1, **kwargs)
    ray = scaling.run_study(small, workers=2, executor="ray", **kwargs)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ray] == [
        {k: v for k, v in r.items() if k not in drop} for r in local
    ]


def test_grouped_schedule_powers_retry_one_power_at_a_time(monkeypatch):
    """The study tunes a schedule family's powers in one call; if that call
    fails, keep_going retries each power alone, with the same results."""
    import nqm._tuning

    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["pwc"], powers=[0.0, 0.5], batch_sizes=[1, 8, 64],
                  targets=[0.1], progress=False)  # fmt: skip
    normal = scaling.run_study(small, **kwargs)
    real = nqm._tuning.tune_schedules

    def one_power_only(problem, fam, bs, target, powers, baselines, **kw):
        if len(powers) > 1:
            raise RuntimeError("simulated failure of a stacked call")
        return real(problem, fam, bs, target, powers, baselines, **kw)

    monkeypatch.setattr(nqm._tuning, "tune_schedules", one_power_only)
    with pytest.raises(RuntimeError, match="simulated"):
        scaling.run_study(small, **kwargs)
    retried = scaling.run_study(small, keep_going=True, **kwargs)
    assert [r["steps"] for r in retried] == [r["steps"] for r in normal]
    assert all(r["error"] is None for r in retried)


def test_repeated_families_powers_and_targets_are_tuned_once():
    small = nqm.NQMProblem.power_law(15)
    once = scaling.run_study(small, ["sgd", "pwc"], [0.0, 1.0], [1, 64], [0.1],
                             progress=False)  # fmt: skip
    again = scaling.run_study(small, ["sgd", "pwc", "pwc"], [0.0, 1.0, 0.0],
                              [1, 64], [0.1, 0.1], progress=False)  # fmt: skip
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in once
    ]


def test_schedule_device_option_reaches_the_tuner():
    """``device`` goes to the schedules' batched L-BFGS (here an explicit CPU
    device: the same records)."""
    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["sgd", "linear_decay"], powers=[0.0, 1.0],
                  batch_sizes=[1, 64], targets=[0.1], progress=False)  # fmt: skip
    default = scaling.run_study(small, **kwargs)
    explicit = scaling.run_study(small, device="cpu:0", **kwargs)
    assert [r["steps"] for r in explicit] == [r["steps"] for r in default]
    with pytest.raises(ValueError, match="torch device"):
        scaling.run_study(small, device="no-such-device", **kwargs)


def test_critical_batch_fits_skip_zero_steps():
    # a target above the initial loss is reached at t = 0: nothing to fit
    recs = [{"family": "sgd", "precond_power": 0.0, "target": 9.0, "batch_size": b,
             "steps": 0} for b in (1, 2, 4, 8)]  # fmt: skip
    (row,) = scaling.critical_batch_fits(recs)
    assert row["n_points"] == 0 and row["s_min"] is None


def _failing_above_8(problem, family, batch_size, target, precond_power=0.0):
    """A tuner that fails for B > 8 (stands in for a tuner bug)."""
    bs = np.atleast_1d(batch_size)
    if np.any(bs > 8):
        raise ValueError("simulated tuner failure")
    return nqm.search.best_steps(problem, family, batch_size, target, precond_power)


def test_keep_going_records_failures_per_batch_size():
    small = nqm.NQMProblem.power_law(15)
    kwargs = dict(families=["sgd"], powers=[0.0], batch_sizes=[1, 8, 64], targets=[0.1],
                  progress=False, search=_failing_above_8)  # fmt: skip
    with pytest.raises(ValueError, match="simulated"):
        scaling.run_study(small, **kwargs)
    recs = scaling.run_study(small, keep_going=True, **kwargs)
    assert [r["batch_size"] for r in recs] == [1, 8, 64]
    assert all(r["error"] is None and math.isfinite(r["steps"]) for r in recs[:2])
    assert math.isnan(recs[2]["steps"]) and "simulated" in recs[2]["error"]
    good = nqm.search.best_steps(small, "sgd", [1, 8], 0.1)
    assert [r["steps"] for r in recs[:2]] == [g.steps for g in good]


def test_reference_study_passes_run_options(monkeypatch):
    seen = []

    def fake_run_study(problem, families, powers, batch_sizes, targets, **kw):
        seen.append(kw)
        return [
            {"family": f, "precond_power": p, "target": t, "batch_size": b,
             "steps": 10.0 / b, "schedule": "constant"}
            for f in families for p in powers for t in targets for b in batch_sizes
        ]  # fmt: skip

    monkeypatch.setattr(scaling, "run_study", fake_run_study)
    # the fake records are no tuned optima: their lr ranges are not asked for
    monkeypatch.setattr(scaling, "optimal_lr_range_table", lambda *a: [])
    cfg = ScalingConfig(dim=10, batch_sizes=(1, 2, 4), families=("momentum",),
                        powers=(0.0,), targets=(0.1,), threshold_targets=(0.2,),
                        workers=3, keep_going=True)  # fmt: skip
    res = scaling.run_reference_study(cfg, progress=False)
    # main grid + the SGD loss-threshold curve + momentum fixed at 0.9 (E.6b)
    assert len(seen) == 3
    assert all(kw["workers"] == 3 and kw["keep_going"] is True for kw in seen)
    assert [kw.get("fixed_momentum") for kw in seen] == [None, None, 0.9]
    assert {r["family"] for r in res.records} == {"momentum", "sgd"}
    assert len(res.extras["fixed_momentum"]) == 3
    seen.clear()
    scaling.run_reference_study(
        dataclasses.replace(cfg, fixed_momentum=0.0), progress=False
    )
    assert len(seen) == 2  # 0 skips the panel


def test_schedule_shapes_handle_constant_fallbacks_per_record():
    # a schedule family may fall back to a constant lr at some batch sizes
    base = {"family": "linear_decay", "precond_power": 0.0, "target": 0.1}
    recs = [
        dict(base, batch_size=1, steps=50, schedule="constant", lr=0.3),
        dict(base, batch_size=4, steps=20, schedule="linear_decay", lr0=1.0,
             decay=0.5, horizon=20),
    ]  # fmt: skip
    rows = scaling.schedule_shapes(recs, n_batch_sizes=2)
    flat = [r["lr"] for r in rows if r["batch_size"] == 1]
    assert flat and all(v == 0.3 for v in flat)
    lin = {r["step"]: r["lr"] for r in rows if r["batch_size"] == 4}
    assert lin[0] == 1.0 and lin[10] == pytest.approx(0.75, rel=RTOL)


def counted_best_steps(*args, log: str, **kwargs):
    """The tuner, appending one line to ``log`` per call."""
    with open(log, "a") as f:
        f.write("call\n")
    return best_steps(*args, **kwargs)


def test_a_journalled_study_resumes_without_tuning_again(problem, tmp_path):
    """A rerun with the journal of a finished (or killed) run tunes nothing and
    returns the same records (oracles: the same study without a journal, and
    the tuner's call log)."""
    log = tmp_path / "calls.log"
    search = functools.partial(counted_best_steps, log=str(log))
    args = (problem, FAST_FAMILIES, [0.0, 1.0], BATCH_SIZES, [TARGET])

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

    plain = scaling.run_study(*args, progress=False, search=search)
    calls = len(log.read_text().split())
    journal = ResultJournal(tmp_path / "journal", salt="test")
    first = scaling.run_study(*args, progress=False, search=search, journal=journal)
    assert len(log.read_text().split()) == 2 * calls and strip(first) == strip(plain)
    again = scaling.run_study(*args, progress=False, search=search, journal=journal)
    assert len(log.read_text().split()) == 2 * calls  # nothing tuned again
    assert again == first
