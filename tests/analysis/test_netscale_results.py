"""Tables from trial records, against brute-force scans and a known S(B)."""

import math

import numpy as np
import pytest

from analysis.netscale.results import (
    best_record,
    bootstrap_critical_batch,
    critical_batch_table,
    mean_curve_steps,
    steps_at,
    steps_table,
    threshold_table,
)

TARGET = 0.5


def _random_records(rng, opts=("adam", "sgd"), sizes=(8, 16, 32), trials=5):
    """Records shaped like a sweep's: curves stop at the first value <= TARGET."""
    records = []
    for opt in opts:
        for b in sizes:
            for i in range(trials):
                n = int(rng.integers(3, 30))
                steps = [10 * k for k in range(n)]
                curve = list(np.exp(-rng.uniform(0, 0.3, n).cumsum()) * 2.0)
                status = "budget"
                hit = [k for k, v in enumerate(curve) if v <= TARGET]
                if hit:
                    steps, curve, status = (
                        steps[: hit[0] + 1],
                        curve[: hit[0] + 1],
                        "reached",
                    )
                elif rng.random() < 0.3:
                    curve[-1] = None
                    status = "diverged"
                records.append(
                    {
                        "optimizer": opt,
                        "batch_size": b,
                        "trial": i,
                        "repeat": 0,
                        "hparams": {"lr": float(rng.uniform())},
                        "status": status,
                        "steps": steps[-1] if status == "reached" else None,
                        "target": TARGET,
                        "curve_steps": steps,
                        "curve": curve,
                    }
                )
    return records


def _brute_steps(record, tau):
    """Scan every evaluated point; a None (non-finite) ends the run."""
    best = math.inf
    for s, v in zip(record["curve_steps"], record["curve"], strict=True):
        if v is None:
            break
        if v <= tau and s < best:
            best = s
    return best


@pytest.mark.parametrize("seed", range(3))
def test_steps_to_result_equals_a_brute_force_scan(seed):
    rng = np.random.default_rng(seed)
    records = _random_records(rng)
    taus = (TARGET, 0.7, 1.0, 1.9)
    rows = threshold_table(records, taus)
    for row in rows:
        group = [
            r
            for r in records
            if r["optimizer"] == row["optimizer"]
            and r["batch_size"] == row["batch_size"]
        ]
        per_trial = [(_brute_steps(r, row["threshold"]), r["trial"]) for r in group]
        expect = min(per_trial)
        assert row["steps"] == expect[0]
        assert row["best_trial"] == (None if expect[0] == math.inf else expect[1])
    for r in records:  # the recorded steps are the scan at the target
        assert steps_at(r) == (math.inf if r["steps"] is None else r["steps"])


def test_steps_table_counts_and_best_hparams():
    rng = np.random.default_rng(7)
    records = _random_records(rng)
    for row in steps_table(records):
        group = [
            r
            for r in records
            if r["optimizer"] == row["optimizer"]
            and r["batch_size"] == row["batch_size"]
        ]
        assert row["trials"] == len(group)
        assert row["feasible"] == sum(r["status"] != "diverged" for r in group)
        assert row["reached"] == sum(r["status"] == "reached" for r in group)
        best = best_record(group)
        if best is None:
            assert row["steps"] == math.inf and "hp_lr" not in row
        else:
            assert row["hp_lr"] == best["hparams"]["lr"]


def test_threshold_below_target_is_refused():
    rec = _random_records(np.random.default_rng(0))[0]
    with pytest.raises(ValueError, match="below the sweep's target"):
        steps_at(rec, TARGET / 2)


def test_mean_curve_crossing_and_diverged_repeats():
    def rep(curve):
        return {
            "target": 1.0,
            "repeat": 1,
            "curve_steps": [0, 5, 10, 15],
            "curve": curve,
        }

    a = rep([3.0, 0.9, 1.5, 0.2])  # a single run crosses early
    b = rep([3.0, 1.7, 0.9, 0.4])
    # means 3, 1.3, 1.2, 0.3: the mean crosses at 15, later than either run
    assert mean_curve_steps([a, b]) == 15.0
    assert steps_at(a) == 5.0 and steps_at(b) == 10.0
    c = rep([3.0, 0.5, None, None])  # diverged after step 5
    assert mean_curve_steps([a, c]) == 5.0  # (0.9 + 0.5) / 2 = 0.7
    assert mean_curve_steps([b, c]) == math.inf


def test_bootstrap_collapses_when_every_trial_is_equal():
    b = 2.0 ** np.arange(6)
    s = 50.0 * (1 + 8.0 / b)
    trials = [np.full(4, v) for v in s]
    out = bootstrap_critical_batch(
        b, trials, n_boot=10, level=0.9, rng=np.random.default_rng(0)
    )
    assert out["b_crit"] == pytest.approx(8.0, rel=1e-6)
    assert out["b_crit_low"] == pytest.approx(out["b_crit"], rel=1e-9)
    assert out["b_crit_high"] == pytest.approx(out["b_crit"], rel=1e-9)
    assert out["n_boot_ok"] == 10


def test_too_few_finite_points_give_nan():
    b = np.array([1.0, 2.0, 4.0])
    trials = [np.array([10.0]), np.array([math.inf]), np.array([math.inf])]
    out = bootstrap_critical_batch(
        b, trials, n_boot=5, level=0.9, rng=np.random.default_rng(0)
    )
    assert math.isnan(out["b_crit"]) and out["n_boot_ok"] == 0


def test_critical_batch_table_from_records():
    records = []
    for b in (1, 2, 4, 8, 16, 32):
        s = 100 * (1 + 4 / b)
        for i in range(3):
            steps = int(round(s * (1 + 0.1 * i)))
            records.append(
                {
                    "optimizer": "sgd",
                    "batch_size": b,
                    "trial": i,
                    "repeat": 0,
                    "target": 1.0,
                    "status": "reached",
                    "steps": steps,
                    "curve_steps": [0, steps],
                    "curve": [2.0, 1.0],
                }
            )
    (row,) = critical_batch_table(records, n_boot=20, seed=1)
    assert row["b_crit"] == pytest.approx(4.0, rel=1e-2)
    assert row["b_crit_low"] <= row["b_crit"] <= row["b_crit_high"]


# --------------------------------------------------------------- coverage
S_MIN, B_CRIT, SIGMA = 100.0, 64.0, 0.3
BATCHES = 2.0 ** np.arange(0, 11)
LEVEL = 0.9


def _coverage(n_sets, n_trials, n_boot, seed):
    """Share of synthetic sweeps whose interval covers the true B_crit.

    Each trial's steps are S(B) exp(sigma Z) with Z standard normal, so the
    minimum over a batch size's trials is S(B) times a factor whose law does not
    depend on B: the fit's B_crit estimates the true one.
    """
    rng = np.random.default_rng(seed)
    s = S_MIN * (1 + B_CRIT / BATCHES)
    hits = 0
    for _ in range(n_sets):
        trials = [np.ceil(v * np.exp(SIGMA * rng.standard_normal(n_trials))) for v in s]
        out = bootstrap_critical_batch(
            BATCHES, trials, n_boot=n_boot, level=LEVEL, rng=rng
        )
        hits += out["b_crit_low"] <= B_CRIT <= out["b_crit_high"]
    return hits / n_sets


#: Coverage must lie within this many binomial standard errors of the level,
#: plus a bias allowance for a finite number of bootstrap replicates.
COVERAGE_Z = 3.0
COVERAGE_BIAS = 0.05


@pytest.mark.slow
def test_bootstrap_interval_covers_the_true_critical_batch_at_its_level():
    n_sets = 150
    cover = _coverage(n_sets, n_trials=8, n_boot=100, seed=11)
    se = math.sqrt(LEVEL * (1 - LEVEL) / n_sets)
    assert abs(cover - LEVEL) <= COVERAGE_Z * se + COVERAGE_BIAS, cover
