r"""Adam on the noisy quadratic model, by Monte Carlo.

Adam's update divides by a running root-mean-square of the gradient, so the state
does not evolve linearly and there is no exact moment recursion: its risk is
estimated from many simulated replicas, on the gradient-noise model of
:func:`nqm.simulate` (:class:`nqm.NoiseModel`), in float64, on CUDA when
available.

With :math:`g_t = H\theta_t + \varepsilon_t`, :math:`\operatorname{Cov}\varepsilon_t
= C/B_t` (Kingma & Ba 2015, Algorithm 1; coordinates are the eigenbasis of H):

.. math::
    m_{t+1} = \beta_1 m_t + (1-\beta_1) g_t,\quad
    v_{t+1} = \beta_2 v_t + (1-\beta_2) g_t^2,\quad
    \theta_{t+1} = \theta_t - \alpha\,
        \frac{m_{t+1}/(1-\beta_1^{t+1})}{\sqrt{v_{t+1}/(1-\beta_2^{t+1})} + \epsilon}.

Limits that the tests check: :math:`\beta_1 = 0`, :math:`\beta_2 \to 0`,
:math:`\epsilon \to 0` is signSGD, :math:`\theta \leftarrow \theta - \alpha
\operatorname{sign}(g)`; for :math:`\epsilon \gg \sqrt{v}` it is SGD with lr
:math:`\alpha/\epsilon` (heavy ball with momentum :math:`\beta_1` and a
bias-correction schedule when :math:`\beta_1 > 0`).

Steps to target. The mean loss :math:`\hat L(t)` and its standard error
:math:`s(t)` are recorded on a grid of steps; the estimate is the first recorded
step with :math:`\hat L \le` target. The confidence interval
:math:`[S_-, S_+]` for the true first crossing :math:`S` uses only pointwise bands
:math:`\hat L \pm z s`, each at one fixed step, so no simultaneous band over
many steps is needed:

* :math:`S_-` is the first step with :math:`\hat L - z s \le` target. If
  :math:`S < S_-`, the band at the fixed step :math:`S` (where
  :math:`L(S) \le` target) missed: probability :math:`\le \alpha/2`.
* :math:`S_+` follows the last step with :math:`\hat L + z s >` target. If
  :math:`S > S_+`, the band at the fixed step :math:`S - 1` (where
  :math:`L > ` target) missed: probability :math:`\le \alpha/2`.

(The first step with :math:`\hat L + z s \le` target would not do: on a flat
stretch of the curve just above the target, one of many nearly independent steps
dips below by chance.) Where the recorded grid is coarser than one step, the
interval widens to the neighbouring recorded steps. A curve that rises above
the target again before the horizon (a large lr at a large batch) has
:math:`S_+ = \infty`: valid, and honest that the horizon does not settle it. Tuning (:func:`tune_adam`) selects on one set of
replicas and reports the estimate of a fresh set, so the reported steps carry no
selection bias (the best of many noisy estimates is optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from .arguments import validate_batch_size, validate_step_limit
from .batch_schedule import BatchSchedule
from .montecarlo import NoiseModel, _default_device, _rademacher_mean
from .problem import NQMProblem

__all__ = [
    "Adam",
    "AdamCurve",
    "AdamEstimate",
    "AdamTuneResult",
    "adam_curves",
    "adam_steps_to_target",
    "tune_adam",
    "record_steps",
    "first_crossing",
]

#: Replica-mode elements per simulated block on the CPU: the per-step tensors of
#: one block stay in cache.
_CPU_BLOCK = 1 << 16
#: ... and on CUDA, where larger blocks only fill the device better.
_CUDA_BLOCK = 1 << 24


@dataclass(frozen=True)
class Adam:
    """Adam's hyperparameters (bias-corrected; Kingma & Ba 2015, Algorithm 1).

    Args:
        lr: :math:`\\alpha > 0`.
        beta1: :math:`\\beta_1 \\in [0, 1)`.
        beta2: :math:`\\beta_2 \\in [0, 1)`.
        eps: :math:`\\epsilon \\ge 0`.

    Raises:
        ValueError: naming the parameter out of range.
    """

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        lr = float(self.lr)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        object.__setattr__(self, "lr", lr)
        for name in ("beta1", "beta2"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 0.0 <= v < 1.0):
                raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
            object.__setattr__(self, name, v)
        eps = float(self.eps)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)


def record_steps(max_steps: int, resolution: float = 1.0 / 64.0) -> np.ndarray:
    """Steps at which the loss is recorded: every step up to ``1/resolution``,
    then a geometric grid of ratio ``1 + resolution``, and ``max_steps``.

    Raises:
        ValueError: for ``max_steps < 1`` or a resolution outside (0, 1].
    """
    max_steps = validate_step_limit(max_steps, "max_steps", minimum=1)
    if not 0.0 < float(resolution) <= 1.0:
        raise ValueError(f"resolution must lie in (0, 1], got {resolution!r}")
    dense = min(int(max_steps), math.ceil(1.0 / resolution))
    n = math.ceil(math.log(max_steps / dense) / math.log1p(resolution)) + 1
    geo = np.round(dense * (1.0 + resolution) ** np.arange(max(n, 1)))
    out = np.unique(np.concatenate([np.arange(dense + 1), geo, [max_steps]]))
    return out[out <= max_steps].astype(np.int64)


@dataclass(frozen=True)
class AdamCurve:
    """Monte-Carlo loss curve of one Adam configuration.

    Attributes:
        adam: the configuration.
        steps: recorded steps, shape ``(T,)``.
        mean: mean loss over replicas, ``(T,)`` (``inf`` where it diverged).
        stderr: standard error of that mean, ``(T,)``.
        replicas: number of replicas.
    """

    adam: Adam
    steps: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    replicas: int

    def steps_to_target(self, target: float, level: float = 0.95) -> AdamEstimate:
        """First recorded step at or below ``target``, with a confidence interval
        at ``level`` (see the module docstring)."""
        return _estimate(self, float(target), float(level))


@dataclass(frozen=True)
class AdamEstimate:
    """Steps to a target, estimated by Monte Carlo.

    Attributes:
        steps: first recorded step with mean loss ``<= target`` (``inf`` if none).
        ci_low, ci_high: confidence interval for the true first step at or below
            the target (``ci_high`` may be ``inf``); its coverage is at least
            ``level`` (the integer crossing is a step function of the curve).
        crossing: the first crossing of the linearly interpolated mean curve
            (a real number of steps).
        crossing_low, crossing_high: confidence interval for the crossing of the
            interpolated true curve, of coverage ``level``.
        level: nominal coverage.
        replicas: replicas behind the estimate.
        resolution_steps: the recorded step before ``steps`` (the true crossing
            of the estimated curve lies in ``(resolution_steps, steps]``).
    """

    steps: int | float
    ci_low: int | float
    ci_high: int | float
    crossing: float
    crossing_low: float
    crossing_high: float
    level: float
    replicas: int
    resolution_steps: int | float


def first_crossing(steps, values, target: float) -> float:
    """Where the linear interpolation of ``values`` (at ``steps``) first reaches
    ``target`` from above (``steps[0]`` if it starts there, ``inf`` if never)."""
    t = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    hit = np.flatnonzero(y <= target)
    if hit.size == 0:
        return math.inf
    k = int(hit[0])
    if k == 0:
        return float(t[0])
    frac = (y[k - 1] - target) / (y[k - 1] - y[k]) if math.isfinite(y[k - 1]) else 1.0
    return float(t[k - 1] + frac * (t[k] - t[k - 1]))


def _last_up_crossing(t, y, target: float) -> float:
    """Where the interpolation of ``y`` last falls to ``target`` (``t[0]`` if it
    never exceeds it, ``inf`` if it ends above)."""
    above = np.flatnonzero(y > target)
    if above.size == 0:
        return float(t[0])
    a = int(above[-1])
    if a + 1 == t.size:
        return math.inf
    frac = (y[a] - target) / (y[a] - y[a + 1]) if math.isfinite(y[a]) else 1.0
    return float(t[a] + frac * (t[a + 1] - t[a]))


def _estimate(curve: AdamCurve, target: float, level: float) -> AdamEstimate:
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite positive loss, got {target!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    t, mean, se = curve.steps, curve.mean, curve.stderr
    lower, upper = mean - z * se, mean + z * se

    def first(mask):
        hit = np.flatnonzero(mask)
        return (int(hit[0]), int(t[hit[0]])) if hit.size else (None, math.inf)

    k, point = first(mean <= target)
    j, low = first(lower <= target)
    if j is not None and j > 0:
        low = int(t[j - 1]) + 1  # the crossing may lie anywhere after the last miss
    above = np.flatnonzero(upper > target)
    if above.size == 0:
        high = int(t[0])
    elif above[-1] + 1 < t.size:
        high = int(t[above[-1] + 1])
    else:
        high = math.inf
    prev = int(t[k - 1]) if k is not None and k > 0 else (0 if k == 0 else math.inf)
    return AdamEstimate(
        steps=point,
        ci_low=low,
        ci_high=high,
        crossing=first_crossing(t, mean, target),
        crossing_low=first_crossing(t, lower, target),
        crossing_high=_last_up_crossing(t, upper, target),
        level=level,
        replicas=curve.replicas,
        resolution_steps=prev,
    )


def _batch_per_step(batch_size, n: int) -> np.ndarray:
    if isinstance(batch_size, BatchSchedule):
        return np.asarray(batch_size(np.arange(n)), dtype=np.float64)
    return np.full(n, float(validate_batch_size(batch_size, scalar=True)))


def adam_curves(
    problem: NQMProblem,
    configs: Sequence[Adam],
    batch_size,
    steps,
    replicas: int = 1000,
    seed: int = 0,
    noise: NoiseModel | str = NoiseModel.GAUSSIAN,
    device: str | torch.device | None = None,
    block: int | None = None,
    float32_draws: bool = True,
) -> list[AdamCurve]:
    r"""Simulate several Adam configurations at once, ``replicas`` runs each.

    Every configuration's replicas are rows of one batched computation (one
    random stream from ``seed``); the rows are independent, so configurations
    share no noise.

    Args:
        problem: the NQM (every mode simulated once, weighted by ``weight``).
        configs: the :class:`Adam` configurations (``beta2`` and ``eps`` may
            differ between them too).
        batch_size: :math:`B \ge 1` or a :class:`~nqm.BatchSchedule`.
        steps: the steps at which to record the loss (integers ``>= 0``).
        replicas: runs per configuration (``>= 2``).
        seed: seed of the run's ``torch.Generator``.
        noise: ``gaussian`` or ``per_example`` (Adam is coordinate-wise in the
            eigenbasis; a rotated noise model has no such basis here).
        device: torch device; default CUDA when available.
        block: replica-mode elements simulated together (default: cache-sized
            on the CPU, large on CUDA).
        float32_draws: draw the Gaussian noise's standard normals in float32
            (torch's vectorised sampler, about 8x faster than its float64 one
            on a CPU) and scale them in float64. The draws are then rounded to
            24 bits and cut off beyond :math:`5.8\sigma` (probability
            :math:`8\cdot 10^{-9}`): a change of the noise variance below
            :math:`10^{-6}` relative, far below any Monte-Carlo error. The state
            and all arithmetic stay float64; ``False`` draws in float64.

    Returns:
        One :class:`AdamCurve` per configuration, in order.

    Raises:
        ValueError: for bad arguments, naming them.
    """
    configs = list(configs)
    if not configs or not all(isinstance(a, Adam) for a in configs):
        raise ValueError("configs must be a non-empty sequence of nqm.adam.Adam")
    rec = np.unique(np.asarray(steps, dtype=np.int64).ravel())
    if rec.size == 0 or np.any(rec < 0):
        raise ValueError(f"steps must be non-negative integers, got {steps!r}")
    if int(replicas) != replicas or replicas < 2:
        raise ValueError(f"replicas must be an integer >= 2, got {replicas!r}")
    try:
        noise = NoiseModel(noise)
    except ValueError:
        noise = None
    if noise not in (NoiseModel.GAUSSIAN, NoiseModel.PER_EXAMPLE):
        raise ValueError("noise must be 'gaussian' or 'per_example' for Adam")
    t_max = int(rec[-1])
    b_steps = _batch_per_step(batch_size, max(t_max, 1))
    if noise is NoiseModel.PER_EXAMPLE and np.any(b_steps != np.round(b_steps)):
        raise ValueError("batch_size must be an integer for per_example noise")
    dev = torch.device(device) if device is not None else _default_device()
    d = problem.n_modes
    if block is None:
        block = _CUDA_BLOCK if dev.type == "cuda" else _CPU_BLOCK
    if int(block) < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    n_cfg = len(configs)
    # rows of a block: k replicas of every configuration
    k = max(1, min(int(replicas), int(block) // (d * n_cfg) or 1))
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    sums = np.zeros((n_cfg, rec.size))
    sq = np.zeros((n_cfg, rec.size))
    done = 0
    while done < replicas:
        r = min(k, int(replicas) - done)
        s1, s2 = _simulate_block(
            problem, configs, r, rec, b_steps, noise, gen, dev, float32_draws
        )
        sums += s1
        sq += s2
        done += r
    n = float(replicas)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = sums / n
        var = np.clip(sq / n - mean * mean, 0.0, None) * n / (n - 1.0)
        se = np.sqrt(var / n)
    mean = np.where(np.isfinite(mean), mean, math.inf)
    se = np.where(np.isfinite(se), se, math.inf)
    return [
        AdamCurve(a, rec.copy(), mean[i], se[i], int(replicas))
        for i, a in enumerate(configs)
    ]


def _simulate_block(problem, configs, r, rec, b_steps, noise, gen, dev, f32):
    """Sums and sums of squares of the loss over ``r`` replicas per configuration,
    at the recorded steps: arrays ``(n_cfg, T)``."""
    f64 = dict(dtype=torch.float64, device=dev)
    n_cfg, d = len(configs), problem.n_modes
    rows = n_cfg * r
    h = torch.tensor(np.array(problem.h), **f64)
    c = torch.tensor(np.array(problem.c), **f64)
    loss_w = 0.5 * torch.tensor(np.array(problem.weight), **f64) * h
    init_sd = torch.sqrt(torch.tensor(np.array(problem.init_sq), **f64))
    lr = np.array([a.lr for a in configs])
    b1 = np.array([a.beta1 for a in configs])
    b2 = np.array([a.beta2 for a in configs])
    eps = np.array([a.eps for a in configs])
    # One configuration (or identical ones): Python scalars, no per-row tensors.
    shared = all(len(set(x.tolist())) == 1 for x in (lr, b1, b2, eps))

    def per_row(values):
        if shared:
            return float(values[0])
        return torch.tensor(np.repeat(values, r), **f64)[:, None]

    with np.errstate(divide="ignore"):  # beta = 0: log 0 = -inf, 1 - 0^t = 1
        log_b1, log_b2 = np.log(b1), np.log(b2)
    w1 = per_row(1.0 - b1)
    beta2_row, w2_row = per_row(b2), per_row(1.0 - b2)
    sd = {x: torch.sqrt(c / x) for x in set(b_steps.tolist())}
    sqrt_c = torch.sqrt(c)

    theta = torch.randn(rows, d, generator=gen, **f64) * init_sd
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    g = torch.empty_like(theta)
    den = torch.empty_like(theta)
    draw = torch.empty(rows, d, dtype=torch.float32 if f32 else torch.float64,
                       device=dev)  # fmt: skip
    s1 = torch.zeros(n_cfg, rec.size, **f64)
    s2 = torch.zeros(n_cfg, rec.size, **f64)
    where = {int(s): i for i, s in enumerate(rec)}

    def record(step):
        loss = ((theta * theta) @ loss_w).view(n_cfg, r)
        i = where[step]
        s1[:, i] = loss.sum(dim=1)
        s2[:, i] = (loss * loss).sum(dim=1)

    if 0 in where:
        record(0)
    for s in range(int(rec[-1])):
        if noise is NoiseModel.GAUSSIAN:
            if f32:
                draw.normal_(generator=gen)
                g.copy_(draw)
            else:
                g.normal_(generator=gen)
            g.mul_(sd[float(b_steps[s])])
        else:
            g.copy_(_rademacher_mean(rows, d, int(b_steps[s]), gen, f64))
            g.mul_(sqrt_c)
        g.addcmul_(theta, h)
        m.lerp_(g, w1)
        if shared:
            v.mul_(beta2_row).addcmul_(g, g, value=w2_row)
        else:
            v.mul_(beta2_row).addcmul_(g, g * w2_row)
        # m_hat / (sqrt(v_hat) + eps) = (sqrt(bc2)/bc1) m / (sqrt(v) + eps sqrt(bc2)),
        # written as m / den with den = (sqrt(v) + eps sqrt(bc2)) bc1/(lr sqrt(bc2))
        bc1 = -np.expm1((s + 1) * log_b1)  # 1 - beta1^(s+1), accurate near 1
        bc2 = -np.expm1((s + 1) * log_b2)
        inv_step = bc1 / (lr * np.sqrt(bc2))
        torch.sqrt(v, out=den)
        den.mul_(per_row(inv_step)).add_(per_row(eps * np.sqrt(bc2) * inv_step))
        theta.addcdiv_(m, den, value=-1.0)
        if s + 1 in where:
            record(s + 1)
    return s1.cpu().numpy(), s2.cpu().numpy()


def adam_steps_to_target(
    problem: NQMProblem,
    adam: Adam,
    batch_size,
    target: float,
    max_steps: int,
    *,
    replicas: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resolution: float = 1.0 / 64.0,
    noise: NoiseModel | str = NoiseModel.GAUSSIAN,
    device: str | torch.device | None = None,
) -> AdamEstimate:
    """Monte-Carlo steps to ``target`` of one Adam configuration, with a
    confidence interval (``inf`` beyond ``max_steps``).

    Args:
        problem, adam, batch_size: as :func:`adam_curves`.
        target: loss to reach, ``> 0``.
        max_steps: simulation horizon.
        replicas, seed, noise, device: as :func:`adam_curves`.
        level: nominal coverage of the interval.
        resolution: relative spacing of the recorded steps (:func:`record_steps`).
    """
    (curve,) = adam_curves(
        problem, [adam], batch_size, record_steps(max_steps, resolution),
        replicas=replicas, seed=seed, noise=noise, device=device,
    )  # fmt: skip
    return curve.steps_to_target(target, level)


@dataclass(frozen=True)
class AdamTuneResult:
    """Adam tuned at one batch size.

    Attributes:
        batch_size: the batch size.
        adam: the selected configuration (``None`` if none reached the target).
        estimate: its steps to target from fresh replicas (unbiased by the
            selection), with a confidence interval.
        search_steps: its steps on the selection replicas (optimistic).
        configs: configurations evaluated.
    """

    batch_size: float
    adam: Adam | None
    estimate: AdamEstimate | None
    search_steps: int | float
    configs: int = field(default=0, compare=False)


def tune_adam(
    problem: NQMProblem,
    batch_sizes: Sequence[float],
    target: float,
    max_steps: int,
    *,
    lrs: Sequence[float] | None = None,
    beta1s: Sequence[float] = (0.0, 0.5, 0.9, 0.99),
    beta2: float = 0.999,
    eps: float = 1e-8,
    replicas: int = 256,
    confirm_replicas: int = 1024,
    refine: int = 2,
    seed: int = 0,
    level: float = 0.95,
    resolution: float = 1.0 / 64.0,
    noise: NoiseModel | str = NoiseModel.GAUSSIAN,
    device: str | torch.device | None = None,
) -> list[AdamTuneResult]:
    r"""Tune Adam's lr and :math:`\beta_1` per batch size by simulation.

    Per batch size: a grid of (lr, :math:`\beta_1`) is simulated on ``replicas``
    replicas; ``refine`` rounds then halve the lr grid's log spacing around the
    best point. The best configuration (fewest estimated steps; ties by the
    lowest mean loss at that step) is re-simulated on ``confirm_replicas`` fresh
    replicas (a different seed stream), and that estimate and its interval are
    reported: choosing the minimum of noisy estimates is biased low, an estimate
    from independent replicas is not.

    Args:
        problem: the NQM.
        batch_sizes: batch sizes to tune at.
        target: loss to reach.
        max_steps: simulation horizon.
        lrs: the initial lr grid (default 13 log-spaced values from
            :math:`10^{-4}` to 1 times the root-mean-square initial coordinate).
        beta1s: :math:`\beta_1` values.
        beta2, eps: fixed.
        replicas: replicas per configuration during the search.
        confirm_replicas: fresh replicas for the reported estimate.
        refine: rounds of lr refinement.
        seed, level, resolution, noise, device: as :func:`adam_steps_to_target`.

    Returns:
        One :class:`AdamTuneResult` per batch size.
    """
    tg = float(target)
    if not (math.isfinite(tg) and tg > 0):
        raise ValueError(f"target must be a finite positive loss, got {target!r}")
    if int(refine) < 0:
        raise ValueError(f"refine must be >= 0, got {refine!r}")
    if int(confirm_replicas) < 2:
        raise ValueError(f"confirm_replicas must be >= 2, got {confirm_replicas!r}")
    if lrs is None:
        rms = math.sqrt(float(np.mean(problem.init_sq))) or 1.0
        lrs = rms * np.geomspace(1e-4, 1.0, 13)
    lrs = np.asarray(lrs, dtype=np.float64)
    if lrs.ndim != 1 or lrs.size == 0 or np.any(~(lrs > 0)):
        raise ValueError("lrs must be a non-empty sequence of positive numbers")
    grid_rec = record_steps(max_steps, resolution)
    results = []
    for i, b in enumerate(batch_sizes):
        cands = [Adam(lr, b1, beta2, eps) for b1 in beta1s for lr in lrs]
        step = float(np.median(np.diff(np.log(np.sort(lrs))))) if lrs.size > 1 else 1.0
        best, evaluated = None, 0
        for rnd in range(int(refine) + 1):
            curves = adam_curves(
                problem, cands, b, grid_rec, replicas=replicas,
                seed=_seed(seed, i, rnd), noise=noise, device=device,
            )  # fmt: skip
            evaluated += len(cands)
            for cv in curves:
                key = _rank(cv, tg)
                if best is None or key < best[0]:
                    best = (key, cv)
            step /= 2.0
            a = best[1].adam
            cands = [
                Adam(a.lr * math.exp(f * step), b1, beta2, eps)
                for b1 in beta1s
                for f in (-1.0, 1.0)
            ]
        (key, cv) = best
        if math.isinf(key[0]):
            results.append(AdamTuneResult(float(b), None, None, math.inf, evaluated))
            continue
        (fresh,) = adam_curves(
            problem, [cv.adam], b, grid_rec, replicas=confirm_replicas,
            seed=_seed(seed, i, -1), noise=noise, device=device,
        )  # fmt: skip
        results.append(
            AdamTuneResult(
                float(b), cv.adam, fresh.steps_to_target(tg, level), key[0], evaluated
            )
        )
    return results


def _rank(curve: AdamCurve, target: float):
    """Fewest steps to target, then the lowest mean loss there (or the lowest
    final loss when never reached)."""
    hit = np.flatnonzero(curve.mean <= target)
    if hit.size:
        return (int(curve.steps[hit[0]]), float(curve.mean[hit[0]]))
    return (math.inf, float(np.min(curve.mean)))


def _seed(seed: int, batch_index: int, round_index: int) -> int:
    """Independent streams per (batch size, round); round -1 is the fresh
    confirmation."""
    seq = np.random.SeedSequence([int(seed), batch_index, round_index + 1])
    return int(seq.generate_state(1)[0])
