"""The noisy quadratic model problem: per-mode curvature, noise and initial state."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NQMProblem"]


def _as_vector(name: str, value, size: int | None = None) -> np.ndarray:
    # Always a private copy: the problem is immutable, and the caller's array stays
    # theirs (writable, and unable to change a validated problem through a view).
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.ndim == 0 and size is not None:
        arr = np.full(size, float(arr))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if size is not None and arr.size != size:
        raise ValueError(
            f"{name} has {arr.size} entries but h has {size} (shapes differ)"
        )
    return arr


@dataclass(frozen=True, eq=False)
class NQMProblem:
    r"""A noisy quadratic model in the shared eigenbasis of H and C.

    .. math::
        L(\theta) = \tfrac12 \sum_i w_i h_i \theta_i^2, \qquad
        g = H\theta + \varepsilon, \quad \operatorname{Cov}(\varepsilon) = C / B .

    Each mode ``i`` stands for ``w_i`` identical dimensions (``weight``, the
    multiplicity; 1 for an uncompressed problem).

    Args:
        h: curvatures :math:`h_i > 0`, shape ``(n,)``.
        c: per-example gradient-noise variances :math:`c_i \ge 0`, shape ``(n,)``
            (the mini-batch noise variance is :math:`c_i / B`).
        init_sq: :math:`E[\theta_i(0)^2] \ge 0`, shape ``(n,)`` or a scalar.
        weight: multiplicities :math:`w_i > 0`, shape ``(n,)`` or a scalar (default 1).

    Raises:
        ValueError: naming the field that is empty, mis-shaped, non-finite, or out
            of range (``h`` must be positive; ``c``, ``init_sq`` non-negative).

    Problems compare and hash by identity (they hold arrays); derived per-power
    quantities are cached on that identity.
    """

    h: np.ndarray
    c: np.ndarray
    init_sq: np.ndarray = field(default=1.0)  # type: ignore[assignment]
    weight: np.ndarray = field(default=1.0)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        h = _as_vector("h", self.h)
        n = h.size
        c = _as_vector("c", self.c, n)
        init_sq = _as_vector("init_sq", self.init_sq, n)
        weight = _as_vector("weight", self.weight, n)
        for name, arr in (("h", h), ("c", c), ("init_sq", init_sq), ("weight", weight)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite")
        if np.any(h <= 0):
            raise ValueError("h must be strictly positive")
        if np.any(c < 0):
            raise ValueError("c must be non-negative")
        if np.any(init_sq < 0):
            raise ValueError("init_sq must be non-negative")
        if np.any(weight <= 0):
            raise ValueError("weight must be strictly positive")
        for name, arr in (("h", h), ("c", c), ("init_sq", init_sq), ("weight", weight)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ views
    @property
    def n_modes(self) -> int:
        """Number of stored modes (after any compression)."""
        return int(self.h.size)

    @property
    def dim(self) -> float:
        """Number of dimensions represented, :math:`\\sum_i w_i`."""
        return float(self.weight.sum())

    def initial_loss(self) -> float:
        """:math:`E[L(\\theta_0)] = \\tfrac12 \\sum_i w_i h_i E[\\theta_i(0)^2]`."""
        return float(0.5 * np.sum(self.weight * self.h * self.init_sq))

    def preconditioned(self, precond_power: float) -> tuple[np.ndarray, np.ndarray]:
        r"""Curvature and noise seen by the preconditioned update, :math:`P = H^p`.

        .. math:: \hat h_i = h_i^{1-p}, \qquad \hat c_i = c_i\, h_i^{-2p}.

        The loss keeps its weight :math:`h_i`.
        """
        p = _check_power(precond_power)
        if p == 0.0:
            return self.h, self.c
        log_h = np.log(self.h)
        # c h^{-2p} exceeds the float range for tiny h (inf is then its value);
        # the loss uses the scaled form of noise_weight, which does not
        with np.errstate(over="ignore"):
            return np.exp((1.0 - p) * log_h), self.c * np.exp(-2.0 * p * log_h)

    def noise_weight(self, precond_power: float) -> np.ndarray:
        r"""Each mode's preconditioned noise as it enters the loss, :math:`h_i \hat c_i`.

        .. math:: h_i \hat c_i = c_i\, \frac{\hat h_i^2}{h_i}
                  = c_i\, \hat h_i\, \frac{\hat h_i}{h_i},
                  \qquad \hat h_i = h_i^{1-p}.

        In this scaled form nothing overflows where the product is finite:
        :math:`\hat c_i = c_i h_i^{-2p}` alone exceeds the float range for
        :math:`p \ge 0.8` and :math:`h_i \le 10^{-154}`, while
        :math:`\hat h_i/h_i = h_i^{-p}` stays below :math:`h_i^{-1}`.

        Args:
            precond_power: :math:`p \in [0, 1]`.

        Returns:
            Array of shape ``(n,)``.
        """
        p = _check_power(precond_power)
        if p == 0.0:
            return self.c * self.h
        hh = np.exp((1.0 - p) * np.log(self.h))
        return self.c * hh * (hh / self.h)

    # ---------------------------------------------------------- constructors
    @classmethod
    def power_law(
        cls,
        dim: int = 10_000,
        h_power: float = 1.0,
        c_power: float = 1.0,
        init_sq: float = 1.0,
    ) -> NQMProblem:
        r"""The reference NQM: :math:`h_i = i^{-a}`, :math:`c_i = i^{-b}`, i = 1..dim.

        With the defaults, :math:`h_i = c_i = 1/i` and :math:`E[\theta_i(0)^2] = 1`
        (Zhang et al. 2019, section 3.7 and appendix E.4).
        """
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        for name, v in (("h_power", h_power), ("c_power", c_power)):
            if not np.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        i = np.arange(1, int(dim) + 1, dtype=np.float64)
        return cls(h=i ** (-float(h_power)), c=i ** (-float(c_power)), init_sq=init_sq)

    @classmethod
    def from_spectra(
        cls, h, c, init_sq=1.0, weight=1.0, *, compress: bool = False
    ) -> NQMProblem:
        """A problem from measured spectra (e.g. K-FAC curvature and gradient
        variance along a network's Kronecker eigenbasis).

        Args:
            h: measured curvatures, shape ``(n,)``; must be positive.
            c: measured per-example gradient variances, shape ``(n,)``.
            init_sq: measured :math:`E[\\theta_i(0)^2]`, shape ``(n,)`` or scalar.
            weight: multiplicities, shape ``(n,)`` or scalar.
            compress: merge modes with identical ``h`` (lossless, see
                :meth:`compressed`).
        """
        problem = cls(h=h, c=c, init_sq=init_sq, weight=weight)
        return problem.compressed() if compress else problem

    # ----------------------------------------------------------- compression
    def compressed(self) -> NQMProblem:
        r"""Merge modes with identical curvature; exact for the expected loss.

        Every mode's expected second moment is
        :math:`E[\theta_i^2] = \text{init}_i F_t(h_i) + (c_i/B) G_t(h_i)`, linear in
        the initial second moment and the noise, so modes sharing :math:`h` merge
        into one with weight :math:`\sum w`, and weight-averaged ``c`` and
        ``init_sq``. The expected loss of every optimizer (any preconditioning
        power, since :math:`\hat h` depends on ``h`` alone) is unchanged up to
        rounding. Monte-Carlo variances are not preserved.
        """
        uniq, inverse = np.unique(self.h, return_inverse=True)
        if uniq.size == self.h.size:
            return self
        w = np.bincount(inverse, weights=self.weight)
        c = np.bincount(inverse, weights=self.weight * self.c) / w
        init = np.bincount(inverse, weights=self.weight * self.init_sq) / w
        return NQMProblem(h=uniq, c=c, init_sq=init, weight=w)

    def binned(self, n_bins: int) -> NQMProblem:
        r"""Geometric binning of the curvature: an explicit approximation.

        Modes are grouped into ``n_bins`` log-spaced bins of ``h``. Each bin
        becomes one mode with weight :math:`W = \sum w`, curvature the weighted
        geometric mean :math:`\bar h`, and ``init_sq`` and ``c`` chosen so that the
        bin keeps its initial loss :math:`\sum w h\, \text{init}` and its
        loss-weighted noise :math:`\sum w h c` (hence, for SGD, its steady-state
        risk to first order in the learning rate). Dynamics inside a bin are
        approximated by the representative curvature: the error grows with the
        bin's width, i.e. falls as ``n_bins`` grows. Use :meth:`compressed` for
        a lossless reduction.
        """
        if int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
        log_h = np.log(self.h)
        lo, hi = log_h.min(), log_h.max()
        if hi == lo:
            edges = np.array([lo, hi + 1.0])
        else:
            edges = np.linspace(lo, hi, int(n_bins) + 1)
        idx = np.clip(
            np.searchsorted(edges, log_h, side="right") - 1, 0, edges.size - 2
        )
        used, inverse = np.unique(idx, return_inverse=True)
        w = np.bincount(inverse, weights=self.weight)
        h_bar = np.exp(np.bincount(inverse, weights=self.weight * log_h) / w)
        init = np.bincount(inverse, weights=self.weight * self.h * self.init_sq)
        noise = np.bincount(inverse, weights=self.weight * self.h * self.c)
        del used
        return NQMProblem(
            h=h_bar, c=noise / (w * h_bar), init_sq=init / (w * h_bar), weight=w
        )

    # -------------------------------------------------------------------- io
    def save(self, path: str | os.PathLike) -> None:
        """Write the problem to an ``.npz`` file atomically (keys h, c, init_sq,
        weight)."""
        from .io import write_atomic

        arrays = dict(h=self.h, c=self.c, init_sq=self.init_sq, weight=self.weight)
        write_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NQMProblem:
        """Read a problem written by :meth:`save` (``init_sq``, ``weight`` optional).

        Raises:
            ValueError: if the file is not a readable ``.npz`` with ``h`` and ``c``
                (:func:`nqm.io.read_npz` says which: missing, a directory, not an
                archive, truncated).
        """
        from .io import read_npz

        stored = read_npz(path, "spectrum file")
        arrays = {k: stored[k] for k in ("h", "c", "init_sq", "weight") if k in stored}
        missing = {"h", "c"} - set(arrays)
        if missing:
            raise ValueError(
                f"spectrum file {str(path)!r} lacks array(s) {sorted(missing)}; "
                "expected keys h, c and optionally init_sq, weight"
            )
        return cls(**arrays)


def _check_power(precond_power: float) -> float:
    p = float(precond_power)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"precond_power must lie in [0, 1], got {precond_power!r}")
    return p
