"""Monte-Carlo simulation of the NQM: actual noisy-gradient iterations.

Many independent replicas run at once as one batched torch computation (CPU or
CUDA), in float64, reproducibly from an explicit seed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch

from .arguments import validate_batch_size, validate_step_limit, validate_steps
from .batch_schedule import BatchSchedule
from .optimizer import Optimizer
from .problem import NQMProblem
from .runtime import torch_device

__all__ = [
    "NoiseModel",
    "MonteCarloResult",
    "simulate",
    "first_passage_steps",
    "MAX_ROTATED_DIM",
]

#: The non-codiagonal model stores a dense d x d rotation.
MAX_ROTATED_DIM = 4096


class NoiseModel(enum.StrEnum):
    """How a mini-batch gradient's noise is drawn.

    * ``gaussian``: :math:`\\varepsilon \\sim N(0, C/B)` in the shared eigenbasis.
    * ``per_example``: the mean of ``B`` per-example draws with covariance ``C``.
      The draws are Rademacher (:math:`\\pm\\sqrt{c_i}`), deliberately non-Gaussian:
      the exact dynamics depend on the noise only through its covariance, and this
      model checks that claim.
    * ``rotated``: H and C have different random orthonormal eigenbases, so they
      are *not* codiagonal: :math:`\\varepsilon = R\\, \\operatorname{diag}(\\sqrt{c/B}) z`
      in H's eigenbasis with a random rotation ``R`` (Haar, from the seed). This is
      the assumption the project tests on real networks; there is no exact
      counterpart. Limited to ``d <= MAX_ROTATED_DIM``.
    """

    GAUSSIAN = "gaussian"
    PER_EXAMPLE = "per_example"
    ROTATED = "rotated"


@dataclass(frozen=True)
class MonteCarloResult:
    """Loss statistics over replicas at the requested steps.

    Attributes:
        steps: shape ``(T,)``.
        mean: mean loss over replicas, shape ``(T,)``.
        stderr: standard error of that mean, shape ``(T,)``.
        replicas: number of replicas.
    """

    steps: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    replicas: int


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _haar_rotation(d: int, gen: torch.Generator, device) -> torch.Tensor:
    z = torch.randn(d, d, generator=gen, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(r))[None, :]


def simulate(
    problem: NQMProblem,
    optimizer: Optimizer,
    batch_size: int | BatchSchedule,
    steps,
    replicas: int = 1000,
    seed: int = 0,
    noise: NoiseModel | str = NoiseModel.GAUSSIAN,
    device: str | torch.device | None = None,
    chunk: int = 512,
) -> MonteCarloResult:
    r"""Run noisy-gradient iterations of ``optimizer`` on ``problem``.

    .. math::
        m \leftarrow \beta m + P^{-1}(H\theta + \varepsilon),\quad
        \theta \leftarrow \theta - \alpha_t m,\quad
        \tilde\theta \leftarrow \gamma\tilde\theta + (1-\gamma)\theta,

    with :math:`\theta_0 \sim N(0, \operatorname{diag}(\text{init\_sq}))`,
    :math:`m_0 = 0`, :math:`\tilde\theta_0 = \theta_0`. Each replica's loss is
    :math:`\tfrac12\sum_i w_i h_i \theta_{o,i}^2` (the averaged iterate when
    :math:`\gamma > 0`).

    Args:
        problem: the NQM (each mode is simulated once, weighted by ``weight``).
        optimizer: any optimizer configuration and schedule.
        batch_size: :math:`B \ge 1` (an integer for ``per_example``), or a
            :class:`~nqm.BatchSchedule` (update :math:`s` draws :math:`B_s`).
        steps: the step counts to report, integers :math:`\ge 0`.
        replicas: number of independent runs (>= 2).
        seed: seed of the run's own ``torch.Generator``; results are reproducible
            on a given device.
        noise: a :class:`NoiseModel`.
        device: torch device; default CUDA when available.
        chunk: replicas simulated together (memory control).

    Returns:
        A :class:`MonteCarloResult`.

    Raises:
        ValueError: for bad batch size, steps, replica count, noise model, a
            rotated model that is too large, or a device that cannot compute
            (:func:`nqm.runtime.torch_device`).
    """
    t = np.atleast_1d(validate_steps(steps)).ravel()
    if isinstance(batch_size, BatchSchedule):
        b_steps = batch_size(np.arange(max(int(t.max()), 1)))
    else:
        b_steps = np.full(
            max(int(t.max()), 1), float(validate_batch_size(batch_size, scalar=True))
        )
    if int(replicas) != replicas or replicas < 2:
        raise ValueError(f"replicas must be an integer >= 2, got {replicas!r}")
    try:
        noise = NoiseModel(noise)
    except ValueError:
        raise ValueError(
            f"noise must be one of {[m.value for m in NoiseModel]}, got {noise!r}"
        ) from None
    if noise is NoiseModel.PER_EXAMPLE and np.any(b_steps != np.round(b_steps)):
        raise ValueError("batch_size must be an integer for per_example noise")
    d = problem.n_modes
    if noise is NoiseModel.ROTATED and d > MAX_ROTATED_DIM:
        raise ValueError(f"rotated noise needs dim <= {MAX_ROTATED_DIM}, got {d}")
    if int(chunk) < 1:
        raise ValueError("chunk must be a positive integer")
    dev = torch_device(device) if device is not None else _default_device()
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))

    f64 = dict(dtype=torch.float64, device=dev)
    h = torch.tensor(np.array(problem.h), **f64)
    c = torch.tensor(np.array(problem.c), **f64)
    loss_w = 0.5 * torch.tensor(np.array(problem.weight), **f64) * h
    init_sd = torch.sqrt(torch.tensor(np.array(problem.init_sq), **f64))
    p = optimizer.precond_power
    pinv = h.pow(-p)  # P^{-1} in H's eigenbasis
    hh = h * pinv
    b_list = [float(x) for x in b_steps]
    # sqrt(C / B_s) for each distinct batch size of the schedule
    noise_sd = {x: torch.sqrt(c / x) for x in set(b_list)}
    rot = _haar_rotation(d, gen, dev) if noise is NoiseModel.ROTATED else None

    t_max = int(t.max())
    lrs = torch.as_tensor(
        np.asarray(optimizer.schedule(np.arange(max(t_max, 1))), dtype=np.float64),
        **f64,
    )
    beta, gamma = optimizer.momentum, optimizer.ema
    report = np.zeros(t_max + 1, dtype=bool)
    report[t] = True
    row_of = {int(s): i for i, s in enumerate(np.unique(t))}
    uniq = np.unique(t)
    sums = torch.zeros(len(uniq), **f64)
    sq_sums = torch.zeros(len(uniq), **f64)

    n_done = 0
    while n_done < replicas:
        r = min(int(chunk), int(replicas) - n_done)
        theta = torch.randn(r, d, generator=gen, **f64) * init_sd
        mom = torch.zeros_like(theta)
        avg = theta.clone()

        def record(step, theta=theta, avg=avg):
            out = avg if gamma > 0 else theta
            loss = (out * out) @ loss_w
            i = row_of[step]
            sums[i] += loss.sum()
            sq_sums[i] += (loss * loss).sum()

        if report[0]:
            record(0)
        for s in range(t_max):
            if noise is NoiseModel.GAUSSIAN:
                eps = torch.randn(r, d, generator=gen, **f64) * noise_sd[b_list[s]]
            elif noise is NoiseModel.PER_EXAMPLE:
                eps = _rademacher_mean(r, d, int(b_list[s]), gen, f64) * torch.sqrt(c)
            else:
                z = torch.randn(r, d, generator=gen, **f64) * noise_sd[b_list[s]]
                eps = z @ rot.T
            g = hh * theta + pinv * eps
            if beta > 0:
                mom.mul_(beta).add_(g)
                theta.sub_(lrs[s] * mom)
            else:
                theta.sub_(lrs[s] * g)
            if gamma > 0:
                avg.mul_(gamma).add_((1.0 - gamma) * theta)
            if report[s + 1]:
                record(s + 1, theta, avg)
        n_done += r

    n = float(replicas)
    mean = sums / n
    var = torch.clamp(sq_sums / n - mean * mean, min=0.0) * n / (n - 1.0)
    stderr = torch.sqrt(var / n)
    idx = np.searchsorted(uniq, t)
    mean_np = mean.cpu().numpy()[idx]
    se_np = stderr.cpu().numpy()[idx]
    mean_np = np.where(np.isnan(mean_np), math.inf, mean_np)
    return MonteCarloResult(steps=t, mean=mean_np, stderr=se_np, replicas=int(replicas))


def first_passage_steps(
    problem: NQMProblem,
    optimizer: Optimizer,
    batch_size: float,
    target: float,
    max_steps: int,
    replicas: int,
    generator: torch.Generator,
    *,
    every: int = 1,
    chunk: int = 512,
) -> np.ndarray:
    r"""Each replica's first crossing of ``target``: a sample of the first-passage time.

    The replicas run the recursion of :func:`simulate` with Gaussian noise
    :math:`\varepsilon \sim N(0, C/B)` and report, per replica,

    .. math::
        \tau = \min\{t \in G : L(\theta_t) \le L^*\},\qquad
        G = \{t \le T : t \equiv 0 \ (\mathrm{mod}\ k)\} \cup \{T\},

    the first step of the check grid G (every ``every`` steps and at the budget
    T, the grid a training run evaluates its metric on) at which the replica's
    own loss is at or below the target; :math:`\infty` when it never is. A
    single training run's steps to result is such a time, whereas
    :func:`nqm.steps_to_target` is the crossing of the *expected* loss; near a
    flat noise floor the first passage comes much earlier.

    Args:
        problem: the NQM.
        optimizer: any optimizer configuration and schedule.
        batch_size: :math:`B > 0`.
        target: :math:`L^* > 0`.
        max_steps: the budget T (>= 0).
        replicas: independent runs (>= 1).
        generator: the seeded CPU ``torch.Generator`` every draw comes from
            (consumed; pass a fresh one for a reproducible sample).
        every: spacing k of the check grid (>= 1).
        chunk: replicas simulated together (memory control).

    Returns:
        float64 array of shape ``(replicas,)``: crossing steps, ``inf`` where a
        replica did not cross within the budget (or diverged).

    Raises:
        ValueError: naming the parameter that is out of range.

    References:
        Zhang et al. 2019, section 3 (the NQM and its steps to target).
    """
    b = float(validate_batch_size(batch_size, scalar=True))
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be positive, got {target!r}")
    for name, value, low in (
        ("max_steps", max_steps, 0),
        ("replicas", replicas, 1),
        ("every", every, 1),
        ("chunk", chunk, 1),
    ):
        validate_step_limit(value, name, minimum=low)
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator")
    t_max, every = int(max_steps), int(every)
    f64 = dict(dtype=torch.float64, device=generator.device)
    h = torch.tensor(np.array(problem.h), **f64)
    loss_w = 0.5 * torch.tensor(np.array(problem.weight), **f64) * h
    init_sd = torch.sqrt(torch.tensor(np.array(problem.init_sq), **f64))
    noise_sd = torch.sqrt(torch.tensor(np.array(problem.c), **f64) / b)
    pinv = h.pow(-optimizer.precond_power)
    hh = h * pinv
    lrs = np.asarray(optimizer.schedule(np.arange(max(t_max, 1))), dtype=np.float64)
    beta, gamma = optimizer.momentum, optimizer.ema
    out = np.full(int(replicas), math.inf)
    for start in range(0, int(replicas), int(chunk)):
        r = min(int(chunk), int(replicas) - start)
        theta = torch.randn(r, int(h.numel()), generator=generator, **f64) * init_sd
        mom = torch.zeros_like(theta)
        avg = theta.clone()
        # The step's temporaries live in buffers allocated once: a fresh
        # (replicas x modes) tensor per step costs page faults on every step.
        eps, g, sq = (torch.empty_like(theta) for _ in range(3))
        passage = torch.full((r,), math.inf, **f64)
        for s in range(t_max + 1):
            if s % every == 0 or s == t_max:
                shown = avg if gamma > 0 else theta
                loss = torch.mul(shown, shown, out=sq) @ loss_w
                hit = (loss <= target) & torch.isinf(passage)
                passage[hit] = float(s)
                if not torch.isinf(passage).any():
                    break
            if s == t_max:
                break
            torch.randn(theta.shape, generator=generator, out=eps).mul_(noise_sd)
            torch.mul(hh, theta, out=g).addcmul_(pinv, eps)
            if beta > 0:
                mom.mul_(beta).add_(g)
                theta.add_(mom, alpha=-float(lrs[s]))
            else:
                theta.add_(g, alpha=-float(lrs[s]))
            if gamma > 0:
                avg.mul_(gamma).add_(theta, alpha=1.0 - gamma)
        out[start : start + r] = passage.cpu().numpy()
    return out


def _rademacher_mean(r: int, d: int, b: int, gen, f64) -> torch.Tensor:
    """Mean of ``b`` Rademacher draws per entry, exactly: (2 K - b) / b with
    K ~ Binomial(b, 1/2), drawn by summing Bernoulli bits in blocks."""
    total = torch.zeros(r, d, **f64)
    left = b
    block = max(1, min(b, 64))
    while left > 0:
        k = min(block, left)
        bits = torch.randint(0, 2, (k, r, d), generator=gen, device=f64["device"])
        total += bits.sum(0).to(torch.float64)
        left -= k
    return (2.0 * total - b) / b
