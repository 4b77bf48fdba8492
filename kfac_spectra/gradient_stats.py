r"""Gradient noise and curvature along Kronecker eigen-directions (Zhang et al. 2019, appendix E.2).

The NQM assumes that the curvature H and the per-example gradient covariance C are
co-diagonal with :math:`H \approx C`. For every direction :math:`v = u \otimes w` of
every block's Kronecker eigenbasis (:mod:`kfac_spectra.eigenbasis`) we measure,
over examples n with per-example gradients :math:`g_n`:

.. math::
    m_v = \mathbb{E}_n[v^\top g_n],\quad
    s_v = \mathbb{E}_n[(v^\top g_n)^2],\quad
    c_v = \mathrm{Var}_n(v^\top g_n),\quad
    h_v = v^\top F v = \mathbb{E}_n\Big[\sum_k (v^\top J_n^\top q_{n,k})^2\Big]

where the probes :math:`q_{n,k}` satisfy :math:`\sum_k q_{n,k} q_{n,k}^\top = H_\ell`
(type-2: columns of the output-Hessian square root, per output position, so F is
exactly the GGN), or are scaled score vectors of sampled targets (MC: an unbiased
estimate of the Fisher), or the observed gradient (empirical Fisher: h = s).

**Per-example loss.** :math:`\ell_n = \sum_{t} \ell(f_{n,t}, y_{n,t})` sums over an
example's output positions t (one for classifiers, T for language models) with
unit-scale terms as in :mod:`kfac_spectra.kfac.fisher`: MSE
:math:`\ell = \lVert f - y\rVert^2` (output Hessian 2I) and cross-entropy on
logits. The training objective is the mean over examples, so h is the curvature of
that objective and c the per-example noise (a batch of B has noise c/B): the NQM's
:math:`h_i` and :math:`c_i`.

**Exact and cheap.** With :math:`G_n = \sum_p \rho_{n,p}\kappa_{n,p}^\top` (see
:mod:`kfac_spectra.layer_capture`), :math:`v^\top g_n = u^\top G_n w =
\sum_p (u^\top\rho_{n,p})(w^\top\kappa_{n,p})`. We project once,
:math:`\tilde\rho = U^\top\rho`, :math:`\tilde\kappa = W^\top\kappa`, and all
directions of example n are the matrix :math:`Z_n = \sum_p \tilde\rho_{n,p}
\tilde\kappa_{n,p}^\top`. With one position per example,
:math:`\sum_n Z_n^{\odot 2} = (\tilde\rho^{\odot 2})^\top \tilde\kappa^{\odot 2}` is
one matrix product and no per-example gradient ever exists; with several positions
(convolutions, sequences, tied weights) :math:`Z_n` is formed exactly, a chunk of
examples at a time, and squared while the chunk is still in cache.

**Precision.** Every sum is accumulated about a shift K (the mean of the first
chunk of examples seen), in float64 across chunks and batches:

.. math::
    m_v = K + \tfrac1N \textstyle\sum_n (Z_n - K),\qquad
    c_v = \frac{\sum_n (Z_n - K)^{\odot 2}
    - \tfrac1N\big(\sum_n (Z_n - K)\big)^{\odot 2}}{N - 1},

which avoids the cancellation of :math:`\mathbb{E}[Z^2] - \mathbb{E}[Z]^2` in
directions whose mean gradient dominates its spread. Blocks with one position per
example are computed in ``stat_dtype`` (float64) throughout; they never form
:math:`Z_n`, so their :math:`\sum_n (Z_n - K)^{\odot 2}` is
:math:`\sum_n Z_n^{\odot 2} - K \odot (2\sum_n Z_n - NK)` with the first sum one
GEMM, which leaves a relative error of about
:math:`\epsilon_{64}(\text{mean}/\text{spread})^2` in the variance (2e-8 for a
mean 1e4 times the spread). For blocks with
several positions, the projections and the per-example matrices of a chunk, the
bulk of the work, are formed in ``compute_dtype``: float32 by default for float32
models (whose captured activations and gradients are float32 anyway), float64 for
float64 models or on request. Measured against the float64 path on the default
MNIST-1D models (``benchmarks/bench_collect.py``, last column) the float32 path
changed variance, second moment and curvature by a relative 3e-4 or less
(typically 1e-5) in every direction whose value exceeds 1e-12 of its block's
largest, and the mean by less than 1e-3 of its standard error; the tests hold it
to 1e-4 on small models with a dominant mean
(``tests/kfac_spectra/test_gradient_stats_precision.py``).

References:
    Zhang et al. 2019, "Which Algorithmic Choices Matter at Which Batch Sizes?",
    section 3.5 and appendix E.2; Martens 2014 (Fisher = GGN for these losses);
    Schraudolph 2002 (curvature-vector products).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kfac_spectra.eigenbasis import KroneckerBasis
from kfac_spectra.kfac.enums import FisherType, LossType, coerce_enum
from kfac_spectra.layer_capture import Block, PerExampleCapture, Side, as_contiguous

__all__ = [
    "CHUNK_BYTES",
    "FisherType",
    "GradientStats",
    "LayerGradientStats",
    "LossType",
    "VarianceCurvatureComparison",
    "compare_variance_curvature",
    "curvature_probes",
    "eigenbasis_gradient_stats",
    "loss_gradient_probe",
]


def _terms(output: Tensor) -> Tensor:
    """View (N, C) or (N, *, C) outputs as (N, M, C)."""
    return output.reshape(output.shape[0], -1, output.shape[-1])


def loss_gradient_probe(output: Tensor, targets: Tensor, loss: LossType) -> Tensor:
    """Gradient of :math:`\\sum_n \\ell_n` with respect to the output.

    Args:
        output: (N, C) or (N, *, C) model output.
        targets: Class ids shaped ``output.shape[:-1]`` (CE), or like ``output``
            (MSE).
        loss: The loss.

    Returns:
        Tensor shaped like ``output`` (detached): :math:`2(f-y)` or
        :math:`\\mathrm{softmax}(f) - \\mathrm{onehot}(y)`.

    Raises:
        ValueError: If ``targets`` has the wrong shape.
    """
    f = output.detach()
    if coerce_enum(LossType, loss, "loss") is LossType.MSE:
        if targets.shape != f.shape:
            raise ValueError(f"targets: MSE needs shape {tuple(f.shape)}")
        return 2.0 * (f - targets.to(f.dtype))
    if targets.shape != f.shape[:-1]:
        raise ValueError(f"targets: CE needs class ids of shape {tuple(f.shape[:-1])}")
    onehot = nn.functional.one_hot(targets.long(), f.shape[-1]).to(f.dtype)
    return torch.softmax(f, dim=-1) - onehot


def curvature_probes(
    output: Tensor,
    targets: Tensor,
    loss: LossType | str,
    fisher_type: FisherType | str,
    *,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Output-space probes q with :math:`\\sum_q (v^\\top J^\\top q)^2 = v^\\top F v`.

    * type-2: for every output position t and class k, the probe that is column k
      of :math:`H_\\ell^{1/2}` at position t and zero elsewhere; :math:`H^{1/2} =
      \\sqrt 2 I` (MSE) or :math:`\\mathrm{diag}(\\sqrt p) - p\\sqrt p^\\top`
      (CE, whose square is :math:`\\mathrm{diag}(p) - pp^\\top`). Exact GGN.
    * MC: ``mc_samples`` probes :math:`\\nabla_f\\ell(f,\\hat y)/\\sqrt{S}` with
      :math:`\\hat y` drawn from the model (all positions at once).
    * empirical: the observed loss gradient.

    Args:
        output: (N, C) or (N, *, C).
        targets: As in :func:`loss_gradient_probe`.
        loss: The loss.
        fisher_type: Which Fisher.
        mc_samples: Samples per example for MC.
        generator: Random generator for MC (on ``output``'s device).

    Yields:
        Tensors shaped like ``output``.

    Raises:
        ValueError: If ``mc_samples`` < 1.

    References:
        Martens and Grosse 2015, section 5 (sampled targets); Botev et al. 2017
        (columns of the output-Hessian square root).
    """
    loss = coerce_enum(LossType, loss, "loss")
    fisher_type = coerce_enum(FisherType, fisher_type, "fisher_type")
    f = output.detach()
    terms = _terms(f)
    if fisher_type is FisherType.EMPIRICAL:
        yield loss_gradient_probe(f, targets, loss)
        return
    if fisher_type is FisherType.MC:
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        scale = 1.0 / math.sqrt(mc_samples)
        for _ in range(mc_samples):
            if loss is LossType.MSE:
                noise = torch.randn(
                    f.shape, generator=generator, dtype=f.dtype, device=f.device
                )
                # y_hat = f + noise / sqrt(2) (variance 1/2): gradient -sqrt(2) noise
                yield noise * (math.sqrt(2.0) * scale)
            else:
                p = torch.softmax(terms, dim=-1)
                sampled = torch.multinomial(
                    p.reshape(-1, p.shape[-1]), 1, generator=generator
                ).reshape(f.shape[:-1])
                yield loss_gradient_probe(f, sampled, loss) * scale
        return
    num_classes = terms.shape[-1]
    p = torch.softmax(terms, dim=-1)
    for t in range(terms.shape[1]):
        for k in range(num_classes):
            probe = torch.zeros_like(terms)
            if loss is LossType.MSE:
                probe[:, t, k] = math.sqrt(2.0)
            else:
                root = p[:, t, k].sqrt()
                probe[:, t] = -p[:, t] * root[:, None]
                probe[:, t, k] += root
            yield probe.reshape(f.shape)


@dataclass(frozen=True)
class LayerGradientStats:
    """Statistics of one block, per direction :math:`v_{ij}` (arrays (r, c)).

    Attributes:
        name: Block key.
        mean: :math:`\\mathbb{E}_n[v^\\top g_n]`.
        second_moment: :math:`\\mathbb{E}_n[(v^\\top g_n)^2]`.
        variance: Unbiased :math:`\\mathrm{Var}_n(v^\\top g_n)` (divides by N-1).
        curvature: :math:`v^\\top F v`.
        kfac_eigenvalues: :math:`\\lambda_i\\mu_j` of the basis (K-FAC's
            prediction of the curvature).
        num_examples: N.
    """

    name: str
    mean: np.ndarray
    second_moment: np.ndarray
    variance: np.ndarray
    curvature: np.ndarray
    kfac_eigenvalues: np.ndarray
    num_examples: int


_ARRAYS = ("mean", "second_moment", "variance", "curvature", "kfac_eigenvalues")


@dataclass(frozen=True)
class GradientStats:
    """Per-block statistics of one measurement.

    Attributes:
        layers: Block key -> statistics.
        loss: The loss.
        fisher_type: The Fisher whose curvature was measured.
        num_examples: N.
    """

    layers: dict[str, LayerGradientStats]
    loss: LossType
    fisher_type: FisherType
    num_examples: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<block>/<field>": array}`` plus metadata, for ``np.savez``."""
        out: dict[str, np.ndarray] = {
            "meta/loss": np.array(str(self.loss.value)),
            "meta/fisher_type": np.array(str(self.fisher_type.value)),
            "meta/num_examples": np.array(self.num_examples),
        }
        for name, layer in self.layers.items():
            for field in _ARRAYS:
                out[f"{name}/{field}"] = getattr(layer, field)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GradientStats:
        """Inverse of :meth:`to_arrays` (e.g. from ``np.load``).

        Raises:
            ValueError: If metadata or a field of a block is missing.
        """
        try:
            n = int(arrays["meta/num_examples"])
            loss = coerce_enum(LossType, str(arrays["meta/loss"]), "loss")
            fisher = coerce_enum(
                FisherType, str(arrays["meta/fisher_type"]), "fisher_type"
            )
        except KeyError as err:
            raise ValueError(f"arrays: missing metadata {err}") from None
        names = sorted(
            {k.rsplit("/", 1)[0] for k in arrays if not k.startswith("meta/")}
        )
        layers = {}
        for name in names:
            missing = [f for f in _ARRAYS if f"{name}/{f}" not in arrays]
            if missing:
                raise ValueError(f"arrays: block {name!r} lacks {missing}")
            fields = {f: np.asarray(arrays[f"{name}/{f}"]) for f in _ARRAYS}
            layers[name] = LayerGradientStats(name=name, num_examples=n, **fields)
        return cls(layers, loss, fisher, n)


#: Bytes of one chunk of per-example matrices: about one core's L2 cache, so that
#: each chunk is centred, squared and summed before it is evicted (4x faster than
#: whole batches for ResNet8's widest layer on a CPU with 1 MiB of L2 per core).
CHUNK_BYTES = 2**20


class _Accumulator:
    """Sums over examples about a shift K, per block (arrays (r, c)).

    Attributes:
        shift: K, fixed by the first examples seen (``None`` before).
        first: :math:`\\sum_n (Z_n - K)`.
        centred: :math:`\\sum_n (Z_n - K)^{\\odot 2}`.
        curvature: :math:`\\sum_n \\sum_k Z_{n,k}^{\\odot 2}` over the probes k.
    """

    def __init__(
        self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> None:
        self.shift: Tensor | None = None
        self.first = torch.zeros(shape, dtype=dtype, device=device)
        self.centred = torch.zeros(shape, dtype=dtype, device=device)
        self.curvature = torch.zeros(shape, dtype=dtype, device=device)

    def add_one_position(self, rho: Tensor, kappa: Tensor) -> None:
        """Add examples with P = 1: three GEMMs, no per-example matrix."""
        n = rho.shape[0]
        rho, kappa = rho[:, 0], kappa[:, 0]
        first = rho.T @ kappa
        if self.shift is None:
            self.shift = first / n
        # sum (Z - K)^2 = sum Z^2 - K (2 sum Z - n K), exact enough in float64.
        # In place: every (r, c) temporary is a fresh allocation; for a 512 x 321
        # block, accumulation and statistics took a third less time without them
        self.centred.addmm_(rho.square().T, kappa.square())
        correction = torch.mul(first, 2.0).sub_(self.shift, alpha=n)
        self.centred.addcmul_(self.shift, correction, value=-1.0)
        self.first.add_(first).sub_(self.shift, alpha=n)

    def add_chunks(self, rho: Tensor, kappa: Tensor, chunk: int) -> None:
        """Add examples with P > 1, forming Z_n - K a chunk of examples at a time.

        Within a chunk, products and sums are in ``rho``'s dtype; chunk sums are
        added in the accumulator's dtype. K is the mean of the first chunk.
        """
        # sums of the transposed chunks, added to the (r, c) sums once per call
        first = torch.zeros_like(self.first.T, memory_format=torch.contiguous_format)
        centred = torch.zeros_like(first)
        neg_shift = None
        for start in range(0, rho.shape[0], chunk):
            z = _transposed_products(rho, kappa, start, chunk)
            if self.shift is None:
                self.shift = z.mean(dim=0).T.to(self.first.dtype).contiguous()
            if neg_shift is None:
                neg_shift = (-self.shift).T.to(z.dtype).contiguous()
            z += neg_shift
            first += z.sum(dim=0)
            centred += z.square_().sum(dim=0)
        self.first += first.T
        self.centred += centred.T

    def add_curvature(self, rho: Tensor, kappa: Tensor, chunk: int) -> None:
        """Add :math:`\\sum_n Z_n^{\\odot 2}` of one probe."""
        if rho.shape[1] == 1:
            self.curvature.addmm_(rho[:, 0].square().T, kappa[:, 0].square())
            return
        curvature = torch.zeros_like(
            self.curvature.T, memory_format=torch.contiguous_format
        )
        for start in range(0, rho.shape[0], chunk):
            z = _transposed_products(rho, kappa, start, chunk)
            curvature += z.square_().sum(dim=0)
        self.curvature += curvature.T

    def statistics(self, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mean, second moment, unbiased variance and curvature of ``count``
        examples.

        .. math::
            m = K + \\tfrac1N\\sum_n (Z_n - K),\\quad
            c = \\frac{\\sum_n (Z_n-K)^2 - \\tfrac1N\\big(\\sum_n (Z_n-K)\\big)^2}
            {N-1},\\quad s = \\tfrac1N\\sum_n (Z_n-K)^2 + K(2m - K).
        """
        mean = torch.div(self.first, count).add_(self.shift)
        variance = self.first.square().div_(count).neg_().add_(self.centred)
        variance.div_(count - 1).clamp_min_(0.0)
        second = torch.mul(mean, 2.0).sub_(self.shift).mul_(self.shift)
        second.add_(self.centred / count).clamp_min_(0.0)
        return mean, second, variance, self.curvature / count


def _transposed_products(rho: Tensor, kappa: Tensor, start: int, chunk: int) -> Tensor:
    """(B, c, r) transposed per-example matrices :math:`Z_n^\\top = \\sum_p
    \\tilde\\kappa_{n,p}\\tilde\\rho_{n,p}^\\top` of examples ``start`` to
    ``start + chunk``.

    Formed as :math:`\\tilde\\kappa_n^\\top \\tilde\\rho_n` rather than
    :math:`\\tilde\\rho_n^\\top \\tilde\\kappa_n`: a convolution's projected
    inputs are a transposed view of an (N, c, P) tensor and the projected output
    gradients are (N, P, r), so both operands are read in the layout they are
    stored in. On one thread, with the transposed chunk sums added to the
    (r, c) sums once per call, the accumulation of the MNIST-1D models'
    convolutions took 25-35% less time for ``simple_cnn`` (3-5x less for its
    first layer: r = 8-16, c = 6, P = 40) and 5-10% less for ResNet8.
    """
    cols = kappa[start : start + chunk].transpose(1, 2)
    return torch.bmm(cols, rho[start : start + chunk])


def _project_uses(
    block: Block,
    basis: KroneckerBasis,
    grads: list[Tensor],
    input_cache: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Projected row and column vectors of all uses, concatenated over positions.

    Args:
        grads: Per use, the (N, P, features) output gradients (any dtype/layout).

    Returns:
        ``(rho, kappa)``: (N, P, r) and (N, P, c), contiguous, in the basis dtype.
    """
    dtype = basis.row_vectors.dtype
    rows, cols = [], []
    for use, grad, projected_input in zip(block.uses, grads, input_cache, strict=True):
        output_grad = as_contiguous(grad, dtype)
        if use.input_side is Side.COL:
            rows.append(output_grad @ basis.row_vectors)
            cols.append(projected_input)
        else:
            rows.append(projected_input)
            cols.append(output_grad @ basis.col_vectors)
    if len(rows) == 1:  # one use: no copy
        return rows[0], cols[0]
    return torch.cat(rows, dim=1), torch.cat(cols, dim=1)


def _project_inputs(block: Block, basis: KroneckerBasis) -> list[Tensor]:
    """Per use, the projected inputs in the basis dtype ((N, P, c) or (N, P, r))."""
    cache = []
    for use in block.uses:
        if use.input_side is Side.COL:
            cache.append(use.projected_inputs(basis.col_vectors))
        else:
            cache.append(basis.row_vectors[use.features])
    return cache


def _default_compute_dtype(model: nn.Module, stat_dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 (or narrower) models, else the stat dtype."""
    param_dtype = next(model.parameters()).dtype
    if param_dtype.itemsize > 4:
        return stat_dtype
    return torch.promote_types(param_dtype, torch.float32)


def eigenbasis_gradient_stats(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    bases: Mapping[str, KroneckerBasis],
    *,
    loss: LossType | str,
    fisher_type: FisherType | str = FisherType.TYPE2,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    stat_dtype: torch.dtype = torch.float64,
    compute_dtype: torch.dtype | None = None,
    max_chunk_elements: int | None = None,
) -> GradientStats:
    """Mean, second moment, variance and curvature along every eigen-direction.

    Args:
        model: The network (examples must not interact; no in-place ops on the
            outputs of captured layers).
        batches: ``(inputs, targets)`` pairs; all of them together are the sample.
        bases: Block key -> basis in the stored layout
            (:func:`kfac_spectra.eigenbasis.kronecker_bases`). Blocks without a
            basis are skipped.
        loss: The per-term loss.
        fisher_type: type-2 (exact GGN), MC (sampled) or empirical.
        mc_samples: Samples per example for MC.
        generator: Random generator for MC sampling.
        stat_dtype: Dtype of the shift, of all sums over chunks and batches, and
            of everything for blocks with one position per example.
        compute_dtype: Dtype of the projections and per-example matrices of
            blocks with several positions per example (convolutions, sequences,
            tied weights), the bulk of the work. ``None``: float32 for models
            with float32 (or narrower) parameters, else ``stat_dtype``. Pass
            ``torch.float64`` to force float64 throughout.
        max_chunk_elements: Bound on ``chunk * r * c`` when per-example matrices
            are formed; ``None``: :data:`CHUNK_BYTES` of ``compute_dtype``.

    Returns:
        The statistics; arrays (r, c) per block.

    Raises:
        ValueError: If a basis names no block or has the wrong shape, fewer
            than two examples are seen, ``compute_dtype`` is not a floating
            dtype, or ``max_chunk_elements`` < 1.
    """
    loss = coerce_enum(LossType, loss, "loss")
    fisher_type = coerce_enum(FisherType, fisher_type, "fisher_type")
    if compute_dtype is None:
        compute_dtype = _default_compute_dtype(model, stat_dtype)
    if not compute_dtype.is_floating_point:
        raise ValueError(f"compute_dtype must be floating, got {compute_dtype}")
    if max_chunk_elements is None:
        max_chunk_elements = CHUNK_BYTES // compute_dtype.itemsize
    if max_chunk_elements < 1:
        raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
    capture = PerExampleCapture(model)
    for name, basis in bases.items():
        if name not in capture.blocks:
            raise ValueError(f"bases: {name!r} is not a block of the model")
        if basis.shape != capture.blocks[name].shape:
            raise ValueError(
                f"bases: {name!r} has shape {basis.shape}, block is "
                f"{capture.blocks[name].shape}"
            )
    device = next(model.parameters()).device
    exact = {k: _basis_to(b, stat_dtype, device) for k, b in bases.items()}
    fast = {k: _basis_to(b, compute_dtype, device) for k, b in exact.items()}
    sums = {k: _Accumulator(b.shape, stat_dtype, device) for k, b in exact.items()}
    chunks = {
        k: max(1, max_chunk_elements // (b.shape[0] * b.shape[1]))
        for k, b in exact.items()
    }
    count = 0
    for inputs, targets in batches:
        with capture.recording():
            output = model(inputs)
        count += output.shape[0]
        # one position per example: exact GEMMs; several: compute_dtype chunks
        chosen = {
            k: exact[k] if _positions(capture.blocks[k]) == 1 else fast[k]
            for k in exact
        }
        caches = {k: _project_inputs(capture.blocks[k], b) for k, b in chosen.items()}
        gradient = capture.output_gradients(
            output, loss_gradient_probe(output, targets, loss)
        )
        for key, basis in chosen.items():
            rho, kappa = _project_uses(
                capture.blocks[key], basis, gradient[key], caches[key]
            )
            if rho.shape[1] == 1:
                sums[key].add_one_position(rho, kappa)
            else:
                sums[key].add_chunks(rho, kappa, chunks[key])
        for probe in curvature_probes(
            output,
            targets,
            loss,
            fisher_type,
            mc_samples=mc_samples,
            generator=generator,
        ):
            probed = capture.output_gradients(output, probe)
            for key, basis in chosen.items():
                rho, kappa = _project_uses(
                    capture.blocks[key], basis, probed[key], caches[key]
                )
                sums[key].add_curvature(rho, kappa, chunks[key])
        capture.clear()
    if count < 2:
        raise ValueError(f"batches: need at least 2 examples, got {count}")
    layers = {}
    for key, acc in sums.items():
        mean, second, variance, curvature = acc.statistics(count)
        layers[key] = LayerGradientStats(
            name=key,
            mean=mean.cpu().numpy(),
            second_moment=second.cpu().numpy(),
            variance=variance.cpu().numpy(),
            curvature=curvature.cpu().numpy(),
            kfac_eigenvalues=exact[key].kronecker_eigenvalues().cpu().numpy(),
            num_examples=count,
        )
    return GradientStats(layers, loss, fisher_type, count)


def _positions(block: Block) -> int:
    """Positions per example summed over the block's uses."""
    return sum(use.num_positions for use in block.uses)


def _basis_to(
    basis: KroneckerBasis, dtype: torch.dtype, device: torch.device
) -> KroneckerBasis:
    return KroneckerBasis(
        *(
            t.to(dtype=dtype, device=device)
            for t in (
                basis.row_values,
                basis.row_vectors,
                basis.col_values,
                basis.col_vectors,
            )
        )
    )


@dataclass(frozen=True)
class VarianceCurvatureComparison:
    """How well :math:`c_v \\approx h_v` holds over a set of directions.

    Attributes:
        name: Block key, or ``"overall"``.
        curvature: (K,) :math:`h_v` of the directions kept (both positive).
        variance: (K,) :math:`c_v` of the same directions.
        log_slope: OLS slope of :math:`\\log c` on :math:`\\log h` (1 if
            :math:`c \\propto h`).
        log_intercept: Its intercept (0 if :math:`c = h`).
        log_correlation: Pearson correlation of :math:`\\log c` and
            :math:`\\log h`.
        fraction_within: Fraction of kept directions with
            :math:`1/\\text{factor} \\le c/h \\le \\text{factor}`.
        factor: That factor.
        num_excluded: Directions dropped because h or c is not above the floor.
    """

    name: str
    curvature: np.ndarray
    variance: np.ndarray
    log_slope: float
    log_intercept: float
    log_correlation: float
    fraction_within: float
    factor: float
    num_excluded: int


def _compare(
    name: str, h: np.ndarray, c: np.ndarray, factor: float, floor: float
) -> VarianceCurvatureComparison:
    h, c = h.ravel(), c.ravel()
    keep = (h > floor) & (c > floor)
    h, c = h[keep], c[keep]
    if h.size >= 2 and np.ptp(np.log(h)) > 0:
        x, y = np.log(h), np.log(c)
        slope, intercept = np.polyfit(x, y, 1)
        corr = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else math.nan
    else:
        slope = intercept = corr = math.nan
    ratio = c / h
    inside = (ratio <= factor) & (ratio >= 1 / factor)
    within = float(np.mean(inside)) if h.size else math.nan
    return VarianceCurvatureComparison(
        name,
        h,
        c,
        float(slope),
        float(intercept),
        corr,
        within,
        factor,
        int((~keep).sum()),
    )


def compare_variance_curvature(
    stats: GradientStats, *, factor: float = 2.0, relative_floor: float = 1e-12
) -> dict[str, VarianceCurvatureComparison]:
    """Compare gradient variance with curvature per block and over all blocks.

    Directions where h or c is at most ``relative_floor`` times the largest value
    of that quantity (over all blocks) are excluded, since their logarithms are
    round-off.

    Args:
        stats: Output of :func:`eigenbasis_gradient_stats`.
        factor: Tolerance of the "H = C" band (2 in the brief of E.2).
        relative_floor: Exclusion threshold relative to the maximum.

    Returns:
        Block key -> comparison, plus ``"overall"`` over all directions.

    Raises:
        ValueError: If ``factor`` <= 1 or ``relative_floor`` < 0.
    """
    if not factor > 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    if relative_floor < 0:
        raise ValueError(f"relative_floor must be >= 0, got {relative_floor}")
    all_h = np.concatenate([s.curvature.ravel() for s in stats.layers.values()])
    all_c = np.concatenate([s.variance.ravel() for s in stats.layers.values()])
    floor = relative_floor * max(all_h.max(initial=0.0), all_c.max(initial=0.0))
    result = {
        name: _compare(name, s.curvature, s.variance, factor, floor)
        for name, s in stats.layers.items()
    }
    result["overall"] = _compare("overall", all_h, all_c, factor, floor)
    return result
