"""Critical batch size, regimes, the Bayes lower bound and noise scales."""

import math

import numpy as np
import pytest

import nqm
from nqm import noise_scale as ns


@pytest.mark.parametrize("s_min,b_crit", [(100.0, 1000.0), (7.0, 3.0), (1e5, 2.0**15)])
def test_fit_recovers_synthetic_curve(s_min, b_crit):
    b = 2.0 ** np.arange(0, 21)
    fit = ns.fit_critical_batch(b, s_min * (1 + b_crit / b))
    assert fit.s_min == pytest.approx(s_min, rel=1e-8)
    assert fit.b_crit == pytest.approx(b_crit, rel=1e-8)
    assert fit.r2 > 1 - 1e-12 and fit.log_rmse < 1e-10
    assert fit.b_crit_in_range


def test_fit_flags_a_curve_without_bend():
    b = 2.0 ** np.arange(0, 11)
    fit = ns.fit_critical_batch(b, 1e6 / b)  # perfect scaling throughout
    assert not fit.b_crit_in_range


def test_fit_with_noise_and_infinite_points():
    rng = np.random.default_rng(0)
    b = 2.0 ** np.arange(0, 16)
    s = 50 * (1 + 300 / b) * np.exp(0.02 * rng.standard_normal(b.size))
    s[0] = math.inf
    fit = ns.fit_critical_batch(b, s)
    assert fit.n_points == b.size - 1
    assert fit.b_crit == pytest.approx(300, rel=0.1)
    assert 0.005 < fit.log_rmse < 0.05


def test_departure_from_perfect_scaling():
    b = 2.0 ** np.arange(0, 21)
    fit = ns.fit_critical_batch(b, 10 * (1 + 2.0**10 / b), tol=0.2)
    # local slope of S_min(1 + Bc/B) is -1/(1 + B/Bc); it exceeds -0.8 once B > Bc/4
    assert fit.departure_batch == 2.0**8


def test_regimes_labels():
    b = 2.0 ** np.arange(0, 21)
    reg = ns.scaling_regimes(b, 10 * (1 + 2.0**10 / b))
    assert reg.regimes[0] == "perfect" and reg.regimes[-1] == "maximal"
    assert "diminishing" in reg.regimes


def test_fit_errors():
    with pytest.raises(ValueError, match="3 finite"):
        ns.fit_critical_batch([1, 2], [3, 2])
    with pytest.raises(ValueError, match="length"):
        ns.fit_critical_batch([1, 2, 4], [3, 2])


def test_bayes_loss_is_posterior_risk():
    # One mode: after n observations y = h theta + eps (var c), posterior variance of
    # theta with prior variance v is 1/(1/v + n h^2/c).
    p = nqm.NQMProblem([2.0], [3.0], init_sq=0.5)
    n = 7.0
    post = 1.0 / (1 / 0.5 + n * 4.0 / 3.0)
    assert ns.bayes_loss(p, n) == pytest.approx(0.5 * 2.0 * post, rel=1e-14)
    assert ns.bayes_loss(p, 0.0) == pytest.approx(p.initial_loss())


def test_lower_bound_is_tight_for_one_mode_at_large_batch():
    # One noise-free mode: Newton's step reaches the optimum at once.
    p = nqm.NQMProblem([1.0], [0.0])
    assert ns.steps_lower_bound(p, 1e-6, 1) == 1
    p = nqm.NQMProblem.power_law(100)
    lb = ns.steps_lower_bound(p, 0.05, 2.0 ** np.arange(0, 12))
    assert np.all(np.diff(lb) <= 0)
    # the bound is the smallest integer t: check t-1 fails and t passes
    for b, t in zip(2.0 ** np.arange(0, 12), lb, strict=True):
        assert ns.bayes_loss(p, b * t) <= 0.05
        assert t == 1 or ns.bayes_loss(p, b * (t - 1)) > 0.05


def test_lower_bound_below_exact_sgd_everywhere():
    p = nqm.NQMProblem.power_law(30)
    for b in (1, 4, 64):
        for lr in (0.05, 0.3, 1.0):
            s = nqm.search.steps_to_target(p, nqm.Optimizer(lr), b, 0.1)
            assert ns.steps_lower_bound(p, 0.1, b) <= s


def test_noise_scales_match_direct_sums():
    p = nqm.NQMProblem.power_law(50)
    opt = nqm.Optimizer(0.4, momentum=0.5, ema=0.9)
    sc = ns.noise_scales(p, opt, 4, [0, 20])
    # at t = 0, E[theta^2] = init_sq = 1: closed form sums
    h, c = p.h, p.c
    assert sc.b_simple[0] == pytest.approx(c.sum() / (h * h).sum(), rel=1e-12)
    assert sc.b_noise[0] == pytest.approx((h * c).sum() / (h**3).sum(), rel=1e-12)
    # later: equals the per-mode second moments of the iterate (averaging ignored)
    m2 = nqm.dynamics.second_moments(p, nqm.Optimizer(0.4, momentum=0.5), 4, 20)
    assert sc.b_simple[1] == pytest.approx(c.sum() / (h * h * m2).sum(), rel=1e-12)
