"""The generator searches against SciPy's Nelder-Mead and bounded Brent, point by point.

The oracle is SciPy's own implementation: every point its objective is called at is
recorded (a copy), and the generator search must request the same points, bit for
bit and in the same order, and return the same answer.
"""

import warnings

import numpy as np
import pytest
from scipy import optimize

from nqm._coroutine_search import ask, bounded_minimum, nelder_mead, run

#: A search that ignores its budget would never end: fail instead of hanging.
pytestmark = pytest.mark.timeout(60)

#: Problems per search; each is run under several budgets.
N_PROBLEMS = 50
#: Tolerances and the simplex step the tuner uses.
NM_XATOL, NM_FATOL, NM_STEP = 1e-3, 1e-7, 0.25
BRENT_XATOL = 1e-4
#: Value of the objective outside its feasible region.
PLATEAU = 1e300


def _recording(fun):
    points = []

    def wrapped(x):
        points.append(np.array(x, dtype=np.float64, copy=True))
        return fun(x)

    return wrapped, points


def _same_points(ours, theirs):
    return len(ours) == len(theirs) and all(
        np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)
    )


def _nm_problem(seed):
    """A seeded objective in 1-3 dimensions and the tuner's initial simplex."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(1, 4))
    a = rng.normal(size=(dim, dim))
    hess = a @ a.T + 0.1 * np.eye(dim)
    centre = rng.normal(size=dim)
    kind = seed % 4

    def quadratic(x):
        return float((x - centre) @ hess @ (x - centre))

    if kind == 0:
        fun = quadratic
    elif kind == 1:  # Rosenbrock (a shifted parabola in one dimension)

        def fun(x):
            if dim == 1:
                return float((x[0] - 1.0) ** 2)
            return float(
                np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
            )

    elif kind == 2:  # a plateau of 1e300 outside a box around the minimum

        def fun(x):
            if np.any(np.abs(x - centre) > 0.6):
                return PLATEAU
            return quadratic(x)

    else:  # values rounded to halves: many exact ties

        def fun(x):
            return float(np.round(2.0 * quadratic(x)) / 2.0)

    x0 = rng.normal(size=dim)
    simplex = np.vstack([x0] + [x0 + NM_STEP * np.eye(dim)[k] for k in range(dim)])
    return fun, simplex


def _brent_problem(seed):
    rng = np.random.default_rng(1000 + seed)
    lo = float(rng.uniform(-2.0, 1.0))
    hi = lo + float(rng.uniform(0.05, 3.0))
    centre = float(rng.uniform(-2.5, 2.5))
    kind = seed % 5
    if kind == 0:
        return (lambda u: (u - centre) ** 2), lo, hi
    if kind == 4:  # wide flat steps: ties between the new point and the best
        return (lambda u: float(np.floor(3.0 * abs(u - centre)))), lo, hi
    if kind == 1:
        return (
            (lambda u: PLATEAU if abs(u - centre) > 0.5 else (u - centre) ** 2),
            lo,
            hi,
        )
    if kind == 2:
        return (lambda u: float(np.round(4.0 * (u - centre) ** 2))), lo, hi
    return (lambda u: np.sin(3.0 * u) + 0.1 * u), lo, hi


def _scipy_nm(fun, simplex, maxfev):
    wrapped, points = _recording(fun)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget-exhaustion warnings
        res = optimize.minimize(
            wrapped,
            simplex[0],
            method="Nelder-Mead",
            options={
                "initial_simplex": simplex,
                "xatol": NM_XATOL,
                "fatol": NM_FATOL,
                "maxfev": maxfev,
                "adaptive": False,
            },
        )
    return res, points


@pytest.mark.parametrize("seed", range(N_PROBLEMS))
def test_nelder_mead_visits_scipys_points(seed):
    fun, simplex = _nm_problem(seed)
    dim = simplex.shape[1]
    for maxfev in (1, 3, 5, 40 * dim, 1000):
        res, theirs = _scipy_nm(fun, simplex, maxfev)
        wrapped, ours = _recording(fun)
        x = run(nelder_mead(ask, simplex, NM_XATOL, NM_FATOL, maxfev), wrapped)
        assert _same_points(ours, theirs), (seed, maxfev, len(ours), len(theirs))
        assert np.array_equal(x, res.x), (seed, maxfev)


@pytest.mark.parametrize("seed", range(12))
def test_nelder_mead_ties_and_many_dimensions(seed):
    """All-equal or stepped values in up to 20 dimensions, budgets ending anywhere."""
    rng = np.random.default_rng(2000 + seed)
    dim = int(rng.integers(1, 21))
    centre = rng.normal(size=dim)
    if seed % 2:

        def fun(x):
            return 3.0

    else:

        def fun(x):
            return float(np.floor(2.0 * np.sum(np.abs(x - centre))))

    x0 = rng.normal(size=dim)
    simplex = np.vstack([x0] + [x0 + NM_STEP * np.eye(dim)[k] for k in range(dim)])
    for maxfev in rng.integers(1, 30 * dim, size=3):
        res, theirs = _scipy_nm(fun, simplex, int(maxfev))
        wrapped, ours = _recording(fun)
        x = run(nelder_mead(ask, simplex, NM_XATOL, NM_FATOL, int(maxfev)), wrapped)
        assert _same_points(ours, theirs), (seed, maxfev)
        assert np.array_equal(x, res.x)


@pytest.mark.parametrize("seed", range(N_PROBLEMS))
def test_bounded_minimum_visits_scipys_points(seed):
    fun, lo, hi = _brent_problem(seed)
    for maxfun in (1, 2, 5, 500):
        theirs_rec, theirs = _recording(fun)
        res = optimize.minimize_scalar(
            theirs_rec,
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": BRENT_XATOL, "maxiter": maxfun},
        )
        wrapped, ours = _recording(fun)
        x = run(bounded_minimum(ask, lo, hi, BRENT_XATOL, maxfun), wrapped)
        assert _same_points(ours, theirs), (seed, maxfun, len(ours), len(theirs))
        assert x == res.x, (seed, maxfun)


def test_searches_interleaved_with_tagged_requests():
    """Several searches driven round-robin, with requests that are not bare points.

    The objective yields a tagged request and the driver answers each search in
    turn, mutating every point it was handed; each search must still follow SciPy.
    """

    def tagged(x):
        value = yield ("evaluate", x)
        return value

    problems = [_nm_problem(seed) for seed in range(4)]
    searches = [
        nelder_mead(tagged, simplex, NM_XATOL, NM_FATOL, 40 * simplex.shape[1])
        for _, simplex in problems
    ]
    fun_b, lo, hi = _brent_problem(0)
    searches.append(bounded_minimum(tagged, lo, hi, BRENT_XATOL))
    funs = [fun for fun, _ in problems] + [lambda x: fun_b(float(x))]
    requests = [next(s) for s in searches]
    results = [None] * len(searches)
    live = set(range(len(searches)))
    while live:
        for i in sorted(live):
            tag, point = requests[i]
            assert tag == "evaluate"
            value = funs[i](point)
            if isinstance(point, np.ndarray):
                point += 7.0  # the search must have handed out a copy
            try:
                requests[i] = searches[i].send(value)
            except StopIteration as stop:
                results[i] = stop.value
                live.discard(i)
    for (fun, simplex), x in zip(problems, results, strict=False):
        res, _ = _scipy_nm(fun, simplex, 40 * simplex.shape[1])
        assert np.array_equal(x, res.x)
    res_b = optimize.minimize_scalar(
        fun_b, bounds=(lo, hi), method="bounded", options={"xatol": BRENT_XATOL}
    )
    assert results[-1] == res_b.x


@pytest.mark.parametrize(
    ("simplex", "kwargs", "match"),
    [
        (np.zeros((2, 2)), {}, "initial_simplex"),
        (np.zeros(3), {}, "initial_simplex"),
        (np.zeros((1, 0)), {}, "initial_simplex"),
        ([[0.0], [np.nan]], {}, "initial_simplex"),
        ([[0.0], [1.0]], {"xatol": -1.0}, "xatol"),
        ([[0.0], [1.0]], {"fatol": np.inf}, "fatol"),
        ([[0.0], [1.0]], {"maxfev": 0}, "maxfev"),
        ([[0.0], [1.0]], {"maxfev": 2.5}, "maxfev"),
    ],
)
def test_nelder_mead_rejects_bad_arguments(simplex, kwargs, match):
    args = {"xatol": NM_XATOL, "fatol": NM_FATOL, "maxfev": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        next(nelder_mead(ask, simplex, **args))


@pytest.mark.parametrize(
    ("lo", "hi", "kwargs", "match"),
    [
        (1.0, 1.0, {}, "lo must be < hi"),
        (2.0, 1.0, {}, "lo must be < hi"),
        (-np.inf, 1.0, {}, "lo"),
        (0.0, np.nan, {}, "hi"),
        (0.0, 1.0, {"xatol": 0.0}, "xatol"),
        (0.0, 1.0, {"xatol": -1e-4}, "xatol"),
        (0.0, 1.0, {"maxfun": 0}, "maxfun"),
    ],
)
def test_bounded_minimum_rejects_bad_arguments(lo, hi, kwargs, match):
    args = {"xatol": BRENT_XATOL} | kwargs
    with pytest.raises(ValueError, match=match):
        next(bounded_minimum(ask, lo, hi, **args))
