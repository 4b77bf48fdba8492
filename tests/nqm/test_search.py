"""steps_to_target and best_steps against brute force and reference grids."""

import math

import numpy as np
import pytest
from nqm_oracles import brute_force_problem_loss

import nqm
from nqm.optimizer import DecayShape
from nqm.search import Family, best_steps, steps_to_target

HORIZON = 6000


def brute_curve(problem, opt, b, horizon=HORIZON):
    """Independent oracle: step-by-step second-moment recursion of the update rule."""
    lr = opt.schedule
    return brute_force_problem_loss(
        problem,
        lambda t: float(lr(t)),
        opt.momentum,
        opt.ema,
        opt.precond_power,
        b,
        np.arange(horizon + 1),
    )


def first_below(curve, target):
    hit = np.nonzero(curve <= target)[0]
    return int(hit[0]) if hit.size else math.inf


@pytest.fixture(scope="module")
def small():
    return nqm.NQMProblem.power_law(40)


OPTIMIZERS = [
    nqm.Optimizer(0.6),
    nqm.Optimizer(1.9),  # alpha h near 2: alternating modes
    nqm.Optimizer(0.4, momentum=0.95),  # strongly oscillating
    nqm.Optimizer(0.05, momentum=(1 - np.sqrt(0.05)) ** 2),  # critical damping
    nqm.Optimizer(0.5, ema=0.9),
    nqm.Optimizer(1.5, ema=0.6),  # averaging of an alternating sequence
    nqm.Optimizer(1.2, momentum=0.8, ema=0.7, precond_power=0.5),
    nqm.Optimizer(nqm.PiecewiseConstant((40, 300), (1.0, 0.3, 0.05))),
    nqm.Optimizer(nqm.PiecewiseConstant((10, 20, 200), (0.2, 1.95, 0.1, 1.5))),
    nqm.Optimizer(nqm.LinearDecay(1.0, 0.05, 400)),
    nqm.Optimizer(lambda t: 1.0 / (1.0 + 0.01 * np.asarray(t))),
]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: repr(o)[:60])
@pytest.mark.parametrize("batch", [1, 16])
def test_first_crossing_equals_brute_force(small, opt, batch):
    curve = brute_curve(small, opt, batch)
    for target in (0.8, 0.2, 0.08, 0.04, 0.02):
        kwargs = {}
        if opt.momentum or opt.ema:
            if not isinstance(opt.lr, nqm.Constant):
                kwargs["max_steps"] = HORIZON
        got = steps_to_target(small, opt, batch, target, **kwargs)
        want = first_below(curve, target)
        if math.isinf(want):
            # never reached within the brute-force horizon: either never, or later
            assert math.isinf(got) or got > HORIZON
        else:
            assert got == want, (target, got, want)


@pytest.mark.parametrize("opt", OPTIMIZERS[:7], ids=lambda o: repr(o)[:60])
def test_a_guess_changes_the_cost_never_the_answer(small, opt):
    # Guesses below, at, just above and far above the first crossing, and past
    # max_steps: the answer is the brute-force first crossing every time.
    curve = brute_curve(small, opt, 4)
    for target in (0.2, 0.04):
        want = first_below(curve, target)
        if math.isinf(want):
            continue
        for guess in (1, max(1, want // 3), max(1, want - 1), want, want + 1,
                      2 * want + 7, 100 * want + 3, 10**9):  # fmt: skip
            got = steps_to_target(small, opt, 4, target, guess=guess)
            assert got == want, (target, guess, got, want)
        # with max_steps below the crossing the guess cannot make it reachable
        if want > 1:
            got = steps_to_target(small, opt, 4, target, max_steps=want - 1, guess=want)
            assert math.isinf(got)


def test_a_guess_finds_a_non_monotone_first_dip():
    # The guess lands after the loss has come back above the target: the dip
    # before it must still be found.
    p = nqm.NQMProblem([1.0], [0.0])
    opt = nqm.Optimizer(0.01, momentum=0.99)
    loss = nqm.expected_loss(p, opt, 1, np.arange(2000))
    below = loss <= 0.05
    first = int(np.argmax(below))
    back_above = first + int(np.argmax(~below[first:]))
    for guess in (back_above, back_above + 5, first + 1):
        assert steps_to_target(p, opt, 1, 0.05, guess=guess) == first


@pytest.mark.parametrize("bad", [0, -3, math.inf, math.nan, "10", 2j])
def test_bad_guess(small, bad):
    with pytest.raises(ValueError, match="guess"):
        steps_to_target(small, nqm.Optimizer(0.5), 1, 0.1, guess=bad)


def test_non_monotone_curve_first_crossing():
    # Momentum near beta -> 1 overshoots: the loss dips below the target and comes
    # back above it; a bisection on the end points would miss the first dip.
    p = nqm.NQMProblem([1.0], [0.0])
    opt = nqm.Optimizer(0.01, momentum=0.99)
    loss = nqm.expected_loss(p, opt, 1, np.arange(2000))
    target = 0.05
    below = loss <= target
    assert below.any() and not below[np.argmax(below) :].all()  # really non-monotone
    assert steps_to_target(p, opt, 1, target) == int(np.argmax(below))


def test_unreachable_and_trivial_targets(small):
    opt = nqm.Optimizer(0.5)
    ss = nqm.closed_form.steady_state_risk(small, 0.5, 4)
    assert math.isinf(steps_to_target(small, opt, 4, 0.99 * ss))
    assert steps_to_target(small, opt, 4, small.initial_loss()) == 0
    diverging = nqm.Optimizer(2.5)
    assert math.isinf(steps_to_target(small, diverging, 4, 0.01))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_target(small, bad):
    with pytest.raises(ValueError, match="target"):
        steps_to_target(small, nqm.Optimizer(0.5), 1, bad)
    with pytest.raises(ValueError, match="target"):
        best_steps(small, "sgd", 1, bad)


def test_bad_family_and_batch(small):
    with pytest.raises(ValueError, match="family"):
        best_steps(small, "adam", 1, 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        best_steps(small, "sgd", 0.5, 0.1)
    with pytest.raises(ValueError, match="max_steps"):
        steps_to_target(
            small, nqm.Optimizer(nqm.LinearDecay(1.0, 0.1, 50), momentum=0.5), 1, 0.1
        )


BATCHES = [1.0, 8.0, 64.0, 1024.0]
TARGET = 0.05


@pytest.fixture(scope="module")
def tuned(small):
    out = {Family.SGD: best_steps(small, Family.SGD, BATCHES, TARGET)}
    for fam in (Family.MOMENTUM, Family.EMA, Family.PWC):
        out[fam] = best_steps(small, fam, BATCHES, TARGET, baseline=out[Family.SGD])
    return out


def test_tuned_steps_are_exact_for_the_returned_optimizer(small, tuned):
    for fam, results in tuned.items():
        for r in results:
            assert r.steps == steps_to_target(
                small, r.optimizer, r.batch_size, TARGET
            ), fam


def test_tuning_never_worse_than_reference_grid(small, tuned):
    lr_max = nqm.max_stable_lr(small)
    lrs = lr_max * np.geomspace(1e-3, 0.999, 40)
    for r in tuned[Family.SGD]:
        grid_best = min(
            steps_to_target(small, nqm.Optimizer(a), r.batch_size, TARGET) for a in lrs
        )
        assert r.steps <= grid_best
    betas = 1.0 - np.geomspace(1e-2, 1.0, 6)[:-1]
    for r in tuned[Family.MOMENTUM]:
        grid_best = min(
            steps_to_target(
                small,
                nqm.Optimizer(f * nqm.max_stable_lr(small, b), momentum=b),
                r.batch_size,
                TARGET,
            )
            for b in betas
            for f in np.geomspace(1e-3, 0.999, 12)
        )
        assert r.steps <= grid_best


@pytest.mark.parametrize("family", ["sgd", "ema"])
def test_polish_on_a_finer_surrogate_recovers_the_binning_error(family):
    # A search on 8 bins of a 1000-mode problem, polished on 128 bins (16 x 8):
    # against an exact lr grid around the answer (41 points, +-30%), the polished
    # steps are within 0.5%; unpolished, the 8-bin optimum is off by over 1%.
    prob = nqm.NQMProblem.power_law(1000)
    res = {
        pol: best_steps(prob, family, 1, 0.01, surrogate_bins=8, polish=pol)
        for pol in (0, 1)
    }
    opt = res[1].optimizer
    assert steps_to_target(prob, opt, 1, 0.01) == res[1].steps
    grid = min(
        steps_to_target(prob, nqm.Optimizer(opt.schedule.lr * f, ema=opt.ema), 1, 0.01)
        for f in np.exp(np.linspace(np.log(0.7), np.log(1.3), 41))
    )
    assert res[1].steps <= grid * (1 + 5e-3)
    assert res[0].steps > grid * (1 + 1e-2)


def test_tuning_beats_a_paper_style_grid_near_critical_damping():
    """With P = H every preconditioned curvature is 1, and heavy ball's best
    setting sits near critical damping, alpha ~ (1 - beta)^2 / 4: a valley
    narrower than any tuning grid, far from the SGD-like basin. The reference is
    the paper's kind of grid (effective lr x 1 - beta log-spaced down to 1e-5),
    scored with exact first crossings."""
    problem = nqm.NQMProblem.power_law(50)
    target, b, p = 0.02, 16.0, 1.0
    r = best_steps(problem, Family.MOMENTUM, b, target, precond_power=p)
    assert r.steps == steps_to_target(problem, r.optimizer, b, target)
    sgd_limit = nqm.max_stable_lr(problem, 0.0, p)
    grid_best = math.inf
    for one_minus_beta in np.geomspace(1e-5, 1.0, 11):
        beta = 1.0 - one_minus_beta
        for f in np.geomspace(1e-7, 1.0, 36):
            lr = f * sgd_limit * one_minus_beta  # effective lr = f * sgd_limit
            if lr < nqm.max_stable_lr(problem, beta, p):
                opt = nqm.Optimizer(lr, momentum=beta, precond_power=p)
                grid_best = min(grid_best, steps_to_target(problem, opt, b, target))
    assert r.steps <= grid_best


def test_fixed_momentum_tunes_the_lr_alone(small):
    """Figure 14b: momentum fixed at 0.9, lr tuned; no worse than a dense lr grid
    at that momentum, exact for the returned optimizer, non-increasing in B."""
    res = best_steps(small, Family.MOMENTUM, BATCHES, TARGET, fixed_momentum=0.9)
    lr_max = nqm.max_stable_lr(small, 0.9)
    lrs = lr_max * np.geomspace(1e-3, 0.999, 24)
    for r in res:
        assert r.optimizer.momentum == 0.9
        assert r.steps == steps_to_target(small, r.optimizer, r.batch_size, TARGET)
        grid_best = min(
            steps_to_target(small, nqm.Optimizer(a, momentum=0.9), r.batch_size, TARGET)
            for a in lrs
        )
        assert r.steps <= grid_best
    steps = [r.steps for r in res]
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False))
    with pytest.raises(ValueError, match="fixed_momentum"):
        best_steps(small, Family.SGD, 1, TARGET, fixed_momentum=0.9)
    with pytest.raises(ValueError, match="fixed_momentum"):
        best_steps(small, Family.MOMENTUM, 1, TARGET, fixed_momentum=1.0)


def test_steps_non_increasing_in_batch_size(tuned):
    for fam, results in tuned.items():
        steps = [r.steps for r in results]
        assert all(a >= b for a, b in zip(steps, steps[1:], strict=False)), (fam, steps)


def test_families_contain_sgd(tuned):
    for fam in (Family.MOMENTUM, Family.EMA, Family.PWC):
        for r, base in zip(tuned[fam], tuned[Family.SGD], strict=True):
            assert r.steps <= base.steps, fam


def _member(opt, fam):
    """Whether ``opt`` is a point of ``fam``'s search space, read off the family
    definitions (Zhang et al. 2019, section 3 and appendix F.3), not from
    :attr:`Family.contained`."""
    constant = isinstance(opt.schedule, nqm.Constant)
    plain = opt.momentum == 0.0 and opt.ema == 0.0
    return {
        Family.SGD: constant and plain,
        Family.MOMENTUM: constant and opt.ema == 0.0,
        Family.EMA: constant and opt.momentum == 0.0,
        Family.MOMENTUM_EMA: constant,
        # equal pieces all at one lr, and a decay factor of one, are constant lrs
        Family.PWC: plain,
        Family.LINEAR_DECAY: plain,
        # no warm-up with no decay (or a final fraction of one) is a constant lr
        Family.WSD: plain,
        Family.COSINE: plain,
    }[fam]


def test_family_containment_is_feasibility_and_is_honoured(tuned):
    """Every optimizer tuned for a contained family is a feasible point of the
    containing one, SGD is contained (transitively) in every other family, and
    the tuner never returns more steps than a contained family's result."""

    def closure(fam):
        return {g for h in fam.contained for g in {h} | closure(h)}

    for fam in Family:
        assert fam not in closure(fam)  # acyclic
        assert (Family.SGD in closure(fam)) == (fam is not Family.SGD)
        for inner in fam.contained:
            for r in tuned.get(inner, ()):
                assert _member(r.optimizer, inner), inner
                assert _member(r.optimizer, fam), (fam, inner)
    for fam, results in tuned.items():
        for inner in fam.contained:
            for r, base in zip(results, tuned[inner], strict=True):
                assert r.steps <= base.steps, (fam, inner)


def test_momentum_ema_contains_momentum_and_ema(small, tuned):
    """momentum_ema contains both momentum (gamma = 0) and ema (beta = 0): given
    their results, or tuning them itself, it is never worse than either."""
    given = best_steps(
        small,
        Family.MOMENTUM_EMA,
        BATCHES,
        TARGET,
        baseline=tuned[Family.SGD],
        contained=[tuned[Family.MOMENTUM], tuned[Family.EMA]],
    )
    for r, m, e in zip(given, tuned[Family.MOMENTUM], tuned[Family.EMA], strict=True):
        assert r.steps <= min(m.steps, e.steps)
        assert r.steps == steps_to_target(small, r.optimizer, r.batch_size, TARGET)
    alone = best_steps(small, Family.MOMENTUM_EMA, BATCHES[:2], TARGET)
    for b, r in zip(BATCHES[:2], alone, strict=True):
        m = best_steps(small, Family.MOMENTUM, b, TARGET)
        e = best_steps(small, Family.EMA, b, TARGET)
        assert r.steps <= min(m.steps, e.steps)
    with pytest.raises(ValueError, match="contained"):
        best_steps(small, Family.MOMENTUM, 1, TARGET, contained=[])
    with pytest.raises(ValueError, match="one per batch size"):
        best_steps(
            small, Family.MOMENTUM_EMA, BATCHES, TARGET,
            contained=[tuned[Family.MOMENTUM][:1], tuned[Family.EMA]],
        )  # fmt: skip


def test_lower_bound_below_every_family(small, tuned):
    from nqm.noise_scale import steps_lower_bound

    lb = steps_lower_bound(small, TARGET, BATCHES)
    for results in tuned.values():
        for bound, r in zip(lb, results, strict=True):
            assert bound <= r.steps


def test_momentum_pays_off_only_at_large_batch(small, tuned):
    # The paper's central claim, on a small problem: at batch 1 momentum and SGD
    # need the same number of steps to within 10%, at large batch momentum helps.
    sgd, mom = tuned[Family.SGD], tuned[Family.MOMENTUM]
    assert mom[0].steps >= 0.9 * sgd[0].steps
    assert mom[-1].steps < 0.7 * sgd[-1].steps


def test_top_level_api():
    # The names: nqm.steps_to_target and nqm.best_steps.
    assert nqm.steps_to_target is steps_to_target
    assert nqm.best_steps is best_steps
    assert nqm.Family is Family


def _assert_piecewise_loss_is_exact(prob, modes, lrs, lengths, bs, powers):
    """The torch loss of every row equals ``nqm.expected_loss`` of the same
    piecewise-constant optimizer (row r: batch size bs[r], power powers[r])."""
    import torch

    from nqm._piecewise_risk import piecewise_risk

    got = piecewise_risk(
        *modes,
        torch.tensor(lrs),
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor(bs),
    ).numpy()
    for row, (b, p) in enumerate(zip(bs, powers, strict=True)):
        keep = lengths[row] > 0
        starts = np.concatenate([[0], np.cumsum(lengths[row])])[:-1][keep]
        sched = nqm.PiecewiseConstant(
            tuple(int(x) for x in starts[1:]), tuple(lrs[row][keep])
        )
        opt = nqm.Optimizer(sched, precond_power=p)
        want = nqm.expected_loss(prob, opt, b, int(lengths[row].sum()))
        assert got[row] == pytest.approx(want, rel=1e-11)


def test_differentiable_schedule_loss_equals_exact_dynamics():
    """The torch loss that the schedule tuner differentiates equals the exact risk
    of the same piecewise-constant optimizer (pieces of zero length included)."""
    import torch

    from nqm.dynamics import _modes

    prob = nqm.NQMProblem.power_law(50)
    rng = np.random.default_rng(5)
    bs = np.array([1.0, 16.0, 512.0])
    k = 7
    lrs = rng.uniform(0.05, 1.95, size=(bs.size, k))
    lengths = rng.integers(0, 400, size=(bs.size, k))
    lengths[:, 2] = 0
    modes = [torch.tensor(np.array(x)) for x in _modes(prob, 0.0)]
    _assert_piecewise_loss_is_exact(prob, modes, lrs, lengths, bs, [0.0] * bs.size)


def test_schedule_tuning_device_option(small):
    import torch

    bs = [1, 64]
    default = best_steps(small, "pwc", bs, 0.05)
    explicit = best_steps(small, "pwc", bs, 0.05, device=torch.device("cpu"))
    assert [r.steps for r in explicit] == [r.steps for r in default]
    with pytest.raises(ValueError, match="device"):
        best_steps(small, "linear_decay", 1, 0.05, device="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            best_steps(small, "pwc", 1, 0.05, device="cuda")


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device"
)
@pytest.mark.parametrize("family", ["pwc", "linear_decay"])
def test_schedule_tuning_on_cuda_matches_cpu(small, family):
    # The same float64 L-BFGS on the GPU; reductions may round differently, so
    # the step counts agree to 0.1% rather than exactly; each is exact for its
    # own optimizer.
    bs = [1, 64, 4096]
    cpu = best_steps(small, family, bs, 0.05)
    gpu = best_steps(small, family, bs, 0.05, device="cuda")
    for c, g in zip(cpu, gpu, strict=True):
        assert abs(g.steps - c.steps) <= 1e-3 * c.steps + 1
        assert steps_to_target(small, g.optimizer, g.batch_size, 0.05) == g.steps


@pytest.mark.parametrize("family", ["pwc", "linear_decay", "sgd", "ema"])
def test_a_sequence_of_powers_equals_one_call_per_power(small, family):
    """Schedules stack every (power, batch size) into one batched L-BFGS whose
    rows do not interact; constant-lr families loop. Either way the results are
    those of one call per power: the same steps (schedules' values agree to
    rounding, which torch may apply in another order for another batch shape)."""
    powers = [0.0, 0.5, 1.0]
    bs = [1, 64, 4096]
    together = best_steps(small, family, bs, 0.05, precond_power=powers)
    assert len(together) == len(powers)
    for p, results in zip(powers, together, strict=True):
        alone = best_steps(small, family, bs, 0.05, precond_power=p)
        assert [r.steps for r in results] == [r.steps for r in alone]
        for r, a in zip(results, alone, strict=True):
            assert r.precond_power == p and r.optimizer.precond_power == p
            if family in ("sgd", "ema"):  # the same numpy calls: identical
                assert r.optimizer == a.optimizer
            else:  # rounding moves L-BFGS along a flat optimum; both certified
                assert steps_to_target(small, r.optimizer, r.batch_size, 0.05) == (
                    r.steps
                )
    # a scalar batch size gives one result per power
    single = best_steps(small, family, 64, 0.05, precond_power=powers)
    assert [r.steps for r in single] == [rs[1].steps for rs in together]


@pytest.mark.parametrize("family", ["pwc", "linear_decay"])
def test_schedule_result_does_not_depend_on_the_other_batch_sizes(small, family):
    """Each (power, batch size) row has its own L-BFGS: tuned alone or among
    others, the same steps (one joint L-BFGS over all batch sizes would couple
    the rows through its shared line search)."""
    from nqm._tuning import tune_schedules

    fam = Family(family)
    bs = np.array([1.0, 8.0, 64.0, 512.0, 4096.0])
    kw = {"surrogate_bins": 128, "pieces": 10, "stairs": 64, "device": "cpu"}
    base = [best_steps(small, "sgd", bs, 0.05, precond_power=0.5)]
    (many,) = tune_schedules(small, fam, bs, 0.05, [0.5], base, **kw)
    for i in range(bs.size):
        (alone,) = tune_schedules(
            small, fam, bs[i : i + 1], 0.05, [0.5], [base[0][i : i + 1]], **kw
        )
        assert alone[0].steps == many[i].steps


def test_powers_argument_errors(small):
    with pytest.raises(ValueError, match="precond_power must lie in"):
        best_steps(small, "pwc", 1, 0.05, precond_power=[0.0, 1.5])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        best_steps(small, "pwc", 1, 0.05, precond_power=[[0.0]])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        best_steps(small, "sgd", 1, 0.05, precond_power=[])
    base = best_steps(small, "sgd", [1], 0.05)
    with pytest.raises(ValueError, match="one entry per power"):
        best_steps(small, "pwc", [1], 0.05, precond_power=[0.0, 1.0], baseline=[base])


def test_padded_rows_of_several_powers_equal_exact_dynamics():
    """Per-row modes (p = 1 merges every mode into one, padded with zero weight)
    give each row the exact risk of its own preconditioned problem."""
    import torch

    from nqm._tuning import _row_modes

    prob = nqm.NQMProblem.power_law(30)
    powers = [0.0, 0.5, 1.0]
    bs = np.array([2.0, 256.0])
    modes, widths = _row_modes(prob, powers, bs.size, {"dtype": torch.float64})
    n_rows = len(powers) * bs.size
    assert modes[0].shape == (n_rows, prob.n_modes)
    assert widths.tolist() == [prob.n_modes] * 4 + [1] * 2
    rng = np.random.default_rng(11)
    lrs = rng.uniform(0.05, 1.9, size=(n_rows, 4))
    lengths = rng.integers(1, 200, size=(n_rows, 4))
    rows_b = np.tile(bs, len(powers))
    rows_p = np.repeat(powers, bs.size)
    _assert_piecewise_loss_is_exact(prob, modes, lrs, lengths, rows_b, rows_p)


def test_rows_cut_to_their_own_modes_have_the_same_values_and_gradients():
    """The schedule tuner runs the rows of p = 1 on their one mode: the padding
    adds exact zeros, so value and gradient are bitwise those of the padded row."""
    import torch

    from nqm._piecewise_risk import piecewise_risk
    from nqm._tuning import _row_modes

    prob = nqm.NQMProblem.power_law(30)
    modes, widths = _row_modes(prob, [1.0], 3, {"dtype": torch.float64})
    rng = np.random.default_rng(12)
    lrs = torch.tensor(rng.uniform(0.05, 1.9, size=(3, 5)))
    lengths = torch.tensor(rng.integers(0, 300, size=(3, 5)), dtype=torch.float64)
    sizes = torch.tensor([1.0, 7.0, 300.0])

    def value_grad(width):
        x = lrs.clone().requires_grad_(True)
        cut = [m[:, :width] for m in modes]
        v = torch.log(piecewise_risk(*cut, x, lengths, sizes))
        (g,) = torch.autograd.grad(v.sum(), x)
        return v.detach(), g

    v_pad, g_pad = value_grad(prob.n_modes)
    v_cut, g_cut = value_grad(int(widths[0]))
    assert int(widths[0]) == 1
    assert torch.equal(v_pad, v_cut) and torch.equal(g_pad, g_cut)


def test_saturated_schedule_logits_give_a_valid_certified_schedule(small):
    """A logit far in the sigmoid's tail rounds to an lr of exactly 0 (or the
    stability edge); clipped to ±40 it is a valid optimizer, certified exactly."""
    import torch

    from nqm._tuning import _certified_schedule

    f64 = {"dtype": torch.float64, "device": "cpu"}
    (base,) = best_steps(small, "sgd", [64], 0.05)
    params = np.array([1e5, 3.0, 0.5, -2.0, -1e5, -1e5, 0.0, 1.0, 2.0, -3e4])
    res = _certified_schedule(
        small, Family.PWC, 64.0, 0.05, 0.0, base, params, 2 * base.steps, 2.0, 10,
        active=True, evaluations=0, f64=f64,
    )  # fmt: skip
    if res.optimizer is not base.optimizer:  # the schedule won: it is valid
        assert min(res.optimizer.schedule.values) > 0
        assert max(res.optimizer.schedule.values) <= 2.0
        assert steps_to_target(small, res.optimizer, 64, 0.05) == res.steps
    assert res.steps <= base.steps
    # the clipped schedule itself is a valid optimizer
    clipped = np.clip(params, -40, 40)
    from nqm._tuning import _schedule_values

    vals = 2.0 * _schedule_values(Family.PWC, torch.tensor(clipped[None]), 10)
    assert float(vals.min()) > 0 and float(vals.max()) <= 2.0


def test_schedule_piece_starting_at_unit_step_size():
    """A piece whose lr makes ``lr * h = 1`` for a mode (that mode is zeroed in
    one step) starts at step 8, which the search for an upper end visits: the
    loss there is finite, and the first crossing is the step-by-step oracle's."""
    problem = nqm.NQMProblem.power_law(4)  # h = 1, 1/2, 1/3, 1/4
    opt = nqm.Optimizer(nqm.PiecewiseConstant((8,), (0.5, 1.0)))
    batch = 64.0
    steps = np.arange(41)
    want = brute_force_problem_loss(
        problem, lambda t: 0.5 if t < 8 else 1.0, 0.0, 0.0, 0.0, batch, steps
    )
    got = nqm.expected_loss(problem, opt, batch, steps)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    target = float(want[20])
    first = int(np.nonzero(want <= target)[0][0])
    assert steps_to_target(problem, opt, batch, target) == first


#: Schedules whose loss is not monotone: a warm-up, an lr raised after a decay,
#: and a staircase of many pieces (so intervals span several pieces).
FLOOR_SCHEDULES = [
    nqm.PiecewiseConstant((30, 90, 400), (0.05, 0.6, 1.9, 0.2)),
    nqm.PiecewiseConstant((200, 260), (1.0, 0.02, 1.5)),
    nqm.PiecewiseConstant(
        tuple(range(50, 3000, 50)), tuple(np.geomspace(1.9, 0.01, 60))
    ),
]


@pytest.mark.parametrize("sched", FLOOR_SCHEDULES, ids=lambda s: repr(s)[:40])
def test_piecewise_floor_bounds_the_loss_on_every_interval(small, sched):
    """The floor of plain SGD under a schedule never exceeds the exact loss at
    any step of the interval (brute-force recursion), on random intervals, and
    equals the loss on a one-step interval."""
    from nqm.crossing import _Curve

    opt = nqm.Optimizer(sched)
    curve = brute_curve(small, opt, 4, horizon=3500)
    c = _Curve(small, opt, 4.0)
    rng = np.random.default_rng(11)
    for _ in range(200):
        a = int(rng.integers(0, 3400))
        b = a + int(rng.integers(1, 100 if rng.random() < 0.5 else 3500 - a))
        F, V = c._sgd_modes([a, b])
        low = c._piecewise_floor(a, b, F, V)
        assert low <= curve[a : b + 1].min() * (1 + 1e-12), (a, b)
    F, V = c._sgd_modes([700, 700])
    assert c._piecewise_floor(700, 700, F, V) == pytest.approx(curve[700], rel=1e-8)


@pytest.mark.parametrize("sched", FLOOR_SCHEDULES, ids=lambda s: repr(s)[:40])
def test_schedule_first_crossing_at_near_tangent_targets(small, sched):
    """Targets a hair above and below the loss at local minima of the curve,
    and at quantiles: the certified search equals the brute-force first
    crossing."""
    opt = nqm.Optimizer(sched)
    curve = brute_curve(small, opt, 1, horizon=3500)
    inner = np.nonzero((curve[1:-1] <= curve[:-2]) & (curve[1:-1] <= curve[2:]))[0] + 1
    picks = list(curve[inner[:: max(1, inner.size // 8)]])
    picks += list(np.quantile(curve, [0.05, 0.3, 0.6, 0.9]))
    for level in picks:
        for target in (level * (1 + 1e-7), level * (1 - 1e-7)):
            want = first_below(curve, target)
            got = steps_to_target(small, opt, 1, target, max_steps=3500)
            assert got == want, (target, got, want)


@pytest.mark.parametrize("family", [Family.PWC, Family.LINEAR_DECAY])
def test_shortest_run_is_the_first_run_length_that_reaches_the_target(family):
    """The run length the tuned parameters need, resolved to a step: the first
    length in (lo, hi] whose schedule (pieces stretched over it) reaches the
    target, against a scan of ``nqm.expected_loss`` of those optimizers."""
    import torch

    from nqm._tuning import _row_modes, _schedule_candidate, _shortest_runs

    prob = nqm.NQMProblem.power_law(30)
    f64 = {"dtype": torch.float64, "device": "cpu"}
    bs = np.array([1.0, 64.0])
    k = 10 if family is Family.PWC else 64
    modes = _row_modes(prob, [0.0], bs.size, f64)
    a_max = 2.0 / float(prob.h.max())
    rng = np.random.default_rng(3)
    n_par = k if family is Family.PWC else 2
    best = rng.normal(0.5, 0.5, size=(bs.size, n_par))
    if family is Family.PWC:
        best = np.sort(best, axis=1)[:, ::-1].copy()  # decaying pieces
    lo, hi = np.array([150, 150]), np.array([400, 400])

    def loss(r, t):
        opt = _schedule_candidate(
            family, best[r], t, a_max, k, 0.0, f64, DecayShape.ONE_MINUS_SQRT
        )
        return nqm.expected_loss(prob, opt, bs[r], t)

    # a target between the losses at lo and hi, per row: equal for both rows
    target = float(np.sqrt(loss(0, 150) * loss(0, 400)))
    got = _shortest_runs(
        family, best, lo, hi, np.array([True, False]), modes,
        torch.full((bs.size,), a_max, **f64), torch.tensor(bs, **f64), k, target,
        DecayShape.ONE_MINUS_SQRT, np.zeros(bs.size, dtype=np.int64),
    )  # fmt: skip
    scan = [t for t in range(151, 401) if loss(0, t) <= target]
    assert got[0] == scan[0]
    assert got[1] == hi[1]  # a row not asked for keeps its run length


def test_a_shorter_run_is_kept_only_when_it_needs_fewer_steps(small):
    """Certification with a shorter run length: never more steps than without
    it, and the steps are those of the schedule returned."""
    import torch

    from nqm._tuning import _certified_schedule

    f64 = {"dtype": torch.float64, "device": "cpu"}
    (base,) = best_steps(small, "sgd", [4], 0.05)
    params = np.linspace(1.0, -2.0, 10)
    run = int(0.9 * base.steps)
    a_max = 2.0 / float(small.h.max())
    kw = dict(active=True, evaluations=0, f64=f64)
    plain = _certified_schedule(
        small, Family.PWC, 4.0, 0.05, 0.0, base, params, run, a_max, 10, **kw
    )
    for shorter in (run // 2, int(0.97 * run), run - 1):
        res = _certified_schedule(
            small, Family.PWC, 4.0, 0.05, 0.0, base, params, run, a_max, 10,
            shorter=shorter, **kw,
        )  # fmt: skip
        assert res.steps <= plain.steps <= base.steps
        assert steps_to_target(small, res.optimizer, 4, 0.05) == res.steps


def test_stage_two_reuses_stage_one_grid_terms_exactly(small):
    """The grid's terms kept by stage 1 at a bracket's step give stage 2 the
    same profile as evaluating the grid again, and stage 1's brackets are
    unchanged by keeping them."""
    from nqm._tuning import _brackets, _Evaluations, _profile, _run_alone, _Space
    from nqm.dynamics import _modes

    hh, _, _ = _modes(small, 0.0)
    space = _Space(Family.MOMENTUM, float(hh.max()), 0.0)
    G = space.grid((8, 5))
    bs = np.array([1.0, 64.0])
    brackets, known = _brackets(small, space, G, bs, 0.05, _Evaluations())
    for i, br in enumerate(brackets):
        assert br is not None and br.hi in known
        fresh, reused = _Evaluations(), _Evaluations()
        again = _run_alone(
            space, _profile(small, space, G, br.hi, bs[i], fresh, keep=2)
        )
        kept = _run_alone(
            space, _profile(small, space, G, br.hi, bs[i], reused, keep=2, known=known)
        )
        np.testing.assert_array_equal(again[0], kept[0])
        np.testing.assert_array_equal(again[1], kept[1])
        # the grid itself is not evaluated a second time
        assert reused.count == fresh.count - G.shape[0] * G.shape[1]


@pytest.mark.parametrize("family", [Family.WSD, Family.COSINE])
def test_certified_schedule_restretched_over_its_steps_is_never_worse(small, family):
    """A decaying schedule stretched over a run longer than it needs reaches the
    target mid-decay; certification re-stretches the same parameters over the
    steps found. Against the step-by-step recursion: the returned optimizer
    reaches the target at exactly the reported step, no later than the schedule
    as given (and here strictly earlier), and the result is that of the same
    parameters stretched over some run length."""
    import torch

    from nqm._tuning import _certified_schedule, _schedule_candidate

    f64 = {"dtype": torch.float64, "device": "cpu"}
    b, target, k = 4.0, 0.05, 64
    (base,) = best_steps(small, "sgd", [b], target)
    a_max = 2.0 / float(small.h.max())
    # peak above the tuned constant lr (logit + 1), no warm-up, decay to 1%
    frac = base.optimizer.schedule.lr / a_max
    peak = math.log(frac) - math.log1p(-frac) + 1.0
    params = np.array(
        [peak, -6.0, 0.0, -4.6] if family is Family.WSD else [peak, -6.0, -4.6]
    )
    run = int(1.2 * base.steps)  # longer than the schedule needs
    horizon = run + 10

    def brute_steps(opt):
        return first_below(brute_curve(small, opt, b, horizon=horizon), target)

    plain = brute_steps(_schedule_candidate(
        family, params, run, a_max, k, 0.0, f64, DecayShape.ONE_MINUS_SQRT
    ))  # fmt: skip
    res = _certified_schedule(
        small, family, b, target, 0.0, base, params, run, a_max, k, active=True,
        evaluations=0, f64=f64,
    )  # fmt: skip
    assert brute_steps(res.optimizer) == res.steps
    assert res.steps < min(plain, base.steps)  # the re-stretch found a shorter run
    stretched = [
        _schedule_candidate(
            family, params, n, a_max, k, 0.0, f64, DecayShape.ONE_MINUS_SQRT
        ).schedule
        for n in range(1, run + 1)
    ]
    assert res.optimizer.schedule in stretched or res.optimizer == base.optimizer


def test_batch_transfer_rescales_a_neighbours_schedule_and_never_adds_steps(small):
    """A batch size whose own schedule is poor takes its neighbour's schedule
    with the lrs divided and the pieces stretched by the batch-size ratio; the
    result reaches the target at exactly its reported step (step-by-step
    recursion), which is fewer than before; a result that is already better
    than the prediction is left as it is."""
    from nqm._tuning import _batch_transfer
    from nqm.families import TuneResult

    target, b_small, b_large = 0.05, 1.0, 2.0
    a_max = 2.0 / float(small.h.max())
    good = nqm.Optimizer(nqm.PiecewiseConstant((300, 500), (0.3, 0.12, 0.04)))
    poor = nqm.Optimizer(0.02)  # a slow constant lr at the smaller batch size
    s_good = steps_to_target(small, good, b_large, target)
    s_poor = steps_to_target(small, poor, b_small, target)
    assert 2 * s_good < s_poor  # the neighbour predicts fewer steps
    res = [
        TuneResult(s_poor, poor, Family.WSD, b_small, 0.0, target, 0),
        TuneResult(s_good, good, Family.WSD, b_large, 0.0, target, 0),
    ]
    out = _batch_transfer(small, np.array([b_small, b_large]), target, res, a_max)
    moved = out[0]
    assert moved.optimizer.schedule == nqm.PiecewiseConstant(
        (600, 1000), (0.15, 0.06, 0.02)
    )
    horizon = 2 * s_good + 200
    brute = first_below(brute_curve(small, moved.optimizer, b_small, horizon), target)
    assert moved.steps == brute < s_poor
    assert out[1] is res[1]  # the larger batch size's own schedule is better


#: Relative margin kept between the brute-force curve and the target where a
#: test needs the closed form and the step-by-step recursion to agree on a side.
SIDE_RTOL = 1e-9


@pytest.mark.parametrize(
    "family,x",
    [
        (Family.SGD, [-4.0]),
        (Family.MOMENTUM, [-4.0, -2.0]),
        (Family.MOMENTUM, [-5.0, -4.0]),
    ],
)
@pytest.mark.parametrize("batch", [1.0, 8.0])
def test_exact_crossing_is_a_crossing_of_the_brute_force_curve(small, family, x, batch):
    """From guesses on either side of the crossing, near and far, the estimate
    is a step where the step-by-step loss reaches the target one step after
    exceeding it (on these smooth curves: the first crossing)."""
    from nqm._tuning import _Evaluations, _exact_crossing, _Space

    hh = small.preconditioned(0.0)[0]
    space = _Space(family, float(hh.max()), 0.0)
    opt = space.setting(np.array(x)).optimizer()
    curve = brute_curve(small, opt, batch)
    for target in (0.08, 0.05):
        want = first_below(curve, target)
        assert 20 < want < HORIZON // 2
        for guess in (1, want // 2, want - 1, want, want + 1, 2 * want):
            t = _exact_crossing(
                small, space, np.array(x), guess, batch, target, _Evaluations()
            )
            assert curve[t] <= target * (1 + SIDE_RTOL), (guess, t)
            assert curve[t - 1] > target * (1 - SIDE_RTOL), (guess, t)
            assert t == want


def test_monotone_tries_the_smaller_batch_optimizer_exactly(small):
    """The optimizer of the smaller batch size replaces a worse one exactly when
    the step-by-step curve says it needs fewer steps, and the result's steps are
    its first crossing."""
    from nqm._tuning import _monotone, _Space
    from nqm.families import TuneResult

    target = 0.05
    h_max = float(small.preconditioned(0.0)[0].max())
    good = _Space(Family.MOMENTUM, h_max, 0.0).setting([-3.5, -3.0]).optimizer()
    slow = _Space(Family.SGD, h_max, 0.0).setting([-5.0]).optimizer()
    bs = np.array([4.0, 8.0, 16.0])
    first = {b: first_below(brute_curve(small, good, b), target) for b in bs}
    slow_steps = first_below(brute_curve(small, slow, 16.0), target)
    assert first[4.0] < HORIZON and first[8.0] < slow_steps < HORIZON
    res = [
        TuneResult(first[4.0], good, Family.MOMENTUM, 4.0, 0.0, target, 0),
        # the slow optimizer at 8: the good one needs fewer steps (probe passes)
        TuneResult(slow_steps, slow, Family.MOMENTUM, 8.0, 0.0, target, 0),
        # already better than the good one at 16: probe fails, nothing changes
        TuneResult(first[16.0] - 1, slow, Family.MOMENTUM, 16.0, 0.0, target, 0),
    ]
    out = _monotone(small, bs, target, res)
    assert out[0] == res[0]
    assert out[1].steps == first[8.0] and out[1].optimizer == good
    assert out[2] == res[2]


def test_searches_together_get_the_one_setting_values(small):
    """Requests of searches run side by side, single points and arrays at their
    own steps, get the terms that risk_terms gives each setting alone."""
    from nqm._tuning import _SURROGATE_RTOL, _Ask, _run_together, _Space
    from nqm.dynamics import risk_terms

    hh = small.preconditioned(0.0)[0]
    space = _Space(Family.MOMENTUM, float(hh.max()), 0.0)
    rng = np.random.default_rng(7)
    pts = space.clip(
        np.stack([rng.uniform(-4.0, 0.0, 12), rng.uniform(-6.0, 0.0, 12)], -1)
    )
    steps = [3, 70, 900, 25_000]

    def search(k, t):
        many = yield _Ask(small, pts[3 * k : 3 * k + 3], t, _SURROGATE_RTOL)
        one = yield _Ask(small, pts[3 * k], t, _SURROGATE_RTOL)
        return many, one

    got = _run_together(space, [search(k, t) for k, t in enumerate(steps)])
    for k, t in enumerate(steps):
        (d, n), (d0, n0) = got[k]
        for j in range(3):
            a, be, g = (float(v) for v in space.params(pts[3 * k + j]))
            d1, n1 = risk_terms(small, a, be, g, 0.0, t, rtol=_SURROGATE_RTOL)
            np.testing.assert_allclose([d[j], n[j]], [d1, n1], rtol=1e-14)
            if j == 0:
                assert isinstance(d0, float) and isinstance(n0, float)
                np.testing.assert_allclose([d0, n0], [d1, n1], rtol=1e-14)
