"""Many step counts in one call: the vectorised paths equal the per-step ones.

Step arrays are evaluated in one closed-form call (and one vectorised doubling for
modes the closed form cannot certify). The oracles are the high-precision moment
powering of ``nqm_oracles`` and, for the vectorised doubling, its own per-step
form.
"""

from __future__ import annotations

import numpy as np
import pytest
from nqm_oracles import mp_problem_loss

import nqm
from nqm._doubling import MomentMap
from nqm._system import Features, system_matrices
from nqm.dynamics import risk_terms

RTOL = 1e-10  # relative, against 40-digit oracles
STEPS = [0, 1, 2, 3, 17, 100, 1001, 65_536, 10**6]

# (lr, momentum, ema, precond power): real and complex momentum roots in one
# problem, an averaging decay equal to a mode's SGD factor (1 - lr h = ema: the
# closed form is undefined there, so doubling must supply that mode), a momentum
# root next to the averaging decay, and preconditioning.
SETTINGS = [
    (0.5, 0.0, 0.0, 0.0),
    (1.0, 0.9, 0.0, 0.0),
    (0.5, 0.0, 0.99, 0.0),
    (0.02, 0.5, 0.99, 0.0),
    (0.8, 0.95, 0.9, 0.5),
]


def small_problem():
    h = np.array([1.0, 0.5, 0.2, 0.1, 0.02, 0.01, 1e-3])
    return nqm.NQMProblem(h, c=h, init_sq=np.linspace(0.5, 2.0, h.size))


@pytest.mark.parametrize("lr,beta,gamma,p", SETTINGS)
def test_step_array_matches_high_precision_oracle(lr, beta, gamma, p):
    prob = small_problem()
    batch = 8.0
    d, n = risk_terms(prob, lr, beta, gamma, p, np.array(STEPS))
    got = d + n / batch
    want = mp_problem_loss(
        prob,
        lr,
        beta,
        gamma,
        p,
        batch,
        STEPS,
        dps=40,
    )
    for t, g, w in zip(STEPS, got, want, strict=True):
        assert abs(g - float(w)) <= RTOL * float(w), (t, g, float(w))


@pytest.mark.parametrize("lr,beta,gamma,p", SETTINGS)
def test_step_array_equals_one_step_at_a_time(lr, beta, gamma, p):
    prob = nqm.NQMProblem.power_law(dim=300)
    steps = np.array(STEPS + [10**9, 10**12])
    d, n = risk_terms(prob, lr, beta, gamma, p, steps)
    for i, t in enumerate(steps):
        d1, n1 = risk_terms(prob, lr, beta, gamma, p, int(t))
        np.testing.assert_allclose([d[i], n[i]], [d1, n1], rtol=1e-13, atol=0)


def test_moment_map_powers_equal_power():
    h = np.array([1.0, 0.3, 1e-4])
    feats = Features(True, True)
    im, ip, n, _ = system_matrices(h, 0.7, 0.9, 0.99, feats)
    mm = MomentMap(im, ip, n[..., :, None] * n[..., None, :])
    steps = np.array([0, 1, 2, 5, 1023, 1024, 777_777, 2**40 + 3])
    e, q = mm.powers(steps)
    assert e.shape == (steps.size, h.size, 3, 3)
    for i, t in enumerate(steps):
        e1, q1 = mm.power(int(t))
        np.testing.assert_array_equal(e[i], e1)
        np.testing.assert_array_equal(q[i], q1)
    with pytest.raises(ValueError, match="steps"):
        mm.powers([-1])


def test_rtol_is_validated_and_loose_rtol_stays_close():
    prob = small_problem()
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match="rtol"):
            risk_terms(prob, 0.5, 0.0, 0.99, 0.0, 10, rtol=bad)
    # a coincident mode (1 - lr h = ema) is undefined in closed form: recomputed by
    # doubling whatever rtol is; a loose rtol changes the rest by less than itself
    exact = np.array(risk_terms(prob, 0.5, 0.0, 0.99, 0.0, np.array(STEPS)))
    loose = np.array(risk_terms(prob, 0.5, 0.0, 0.99, 0.0, np.array(STEPS), rtol=1e-6))
    np.testing.assert_allclose(loose, exact, rtol=1e-6, atol=0)


#: Relative agreement of the converged risk with its stationary limit.
STATIONARY_RTOL = 1e-12


def test_step_array_of_decayed_horizons_with_mixed_roots():
    """Several step counts at which every transient has decayed, with momentum
    whose modes have both complex roots (large curvature) and real roots
    (small): the mean term vanishes and the noise term equals its stationary
    limit (the discrete Lyapunov equation, solved independently)."""
    problem = nqm.NQMProblem.power_law(dim=100)
    opt = nqm.Optimizer(0.1, momentum=0.9)
    D, N = risk_terms(problem, 0.1, momentum=0.9, steps=[10**6, 10**9])
    want = nqm.steady_state_loss(problem, opt, 1.0)
    assert np.all(D == 0.0)
    np.testing.assert_allclose(N, want, rtol=STATIONARY_RTOL)
