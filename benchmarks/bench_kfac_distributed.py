"""Data-parallel K-FAC: step time against data-parallel SGD over global batch
sizes, bytes sent per step, and the per-rank decomposition time with the
inverse work shared.

Run: ``python benchmarks/bench_kfac_distributed.py`` (2 local gloo processes on
the CPU, single-threaded each; 7-9 minutes on a shared 2-core machine at
load 2-5; ``--global-batch 256 1024 4096`` the batches of section 1; ``--quick`` for a smoke run). Every number is
measured in this one run, side by side. A step is zero_grad, forward, loss,
backward (with DDP's gradient all-reduce) and step; K-FAC updates its factors
every 10 and its inverses every 100 steps. Times are those of windows of 100
steps (10 factor steps and 1 inverse step each), the runs interleaved within
each round in chunks of 10 consecutive steps (so that all runs see the same load
of the shared machine); a window's time is the slower rank's sum over its
chunks, as wall time and as the main thread's CPU time (the work a rank does, less sensitive to
the machine's load; gloo communicates on its own threads, so CPU time leaves the
transfers out). Ratios to SGD are taken within each round; medians over rounds
are printed with their range, and the load average at the start and the end.

1. K-FAC (shared layout) over SGD at each global batch for the MLP 40-256-256-10
   and the small 1-D CNN of ``bench_kfac.py``, per variant: the Fisher type (MC,
   the default; empirical, KAISA's, without the second backward pass), for the
   CNN the convolution approximation (expand, reduce), and the statistics from
   256 rows of the global batch (``stats_batch_size``). Next to each, two flop
   floors over SGD's step (``torch.utils.flop_counter``, the slower rank):
   ``plain``, a step without factors or inverses (the every-step products with
   the cached inverses), and ``window``, the mean step of a window (with the
   factor statistics, the MC backward pass, and the decompositions at ``9n^3``).
   The preconditioning costs the same at any batch, so ``plain`` falls towards 1
   as the batch grows; the factor statistics grow with the batch like the
   forward pass, so ``window`` stays at least ``1 + (statistics flops) / (10 ·
   SGD flops)`` at every batch, unless they come from a fixed number of rows.
   The floors count every flop at one speed; the statistics' large products run
   faster per flop than the small-channel convolutions of SGD's own step, so
   the measured time can fall below ``window`` (a floor of the flops, not of
   the time). For the CNN, which expand input factor each convolution forms:
   the lagged channel correlations where ``prefer_lagged`` finds them faster
   (stride 1, large enough), else the Gram matrix of the unfolded patches; the
   flop counter counts the products actually run. Then, from these
   measurements, where ``<= 1.15x`` is met and where not, and why: the window
   floor above 1.15x, or time above a floor that allows it.
2. The inverse layouts (shared, replicated, owner) at the global batch 256: the
   step time, the flop floor ``plain``, the bytes each rank sends into
   collectives per step, by kind, next to the gradient that DDP all-reduces
   every step (and the shared layout with ``factor_sync="every_update"``,
   which averages the statistics on every factor update instead of before each
   inverse update); and where the time goes: the median CPU time of each kind of
   K-FAC step (plain, factor, inverse) against an SGD step's, and their mix.
3. A model of many similar blocks (a stack of ``--blocks`` linear layers of
   width ``--width``): the time of an inverse update per rank (a step with
   decompositions minus one without, medians), every rank decomposing every
   block (``replicated``) against each rank its share (``shared``, including
   the broadcast; ``owner``, which sends nothing on that step but its flags).
   With W ranks the ratio should approach W. Printed as the main thread's CPU
   time (the work each rank does, whatever the machine's load) and as wall time
   (which also depends on the ranks getting a core each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from kfac_spectra import KFAC
from kfac_spectra.kfac import FactorSync, FisherType, KFACApprox
from kfac_spectra.kfac.blocks.conv import prefer_lagged
from kfac_spectra.kfac.distributed import assign_owners, decomposition_cost
from kfac_spectra.kfac.toy_models import cnn1d, mlp
from kfac_spectra.launch import spawn_local

KFAC_KW = {"lr": 0.01, "damping": 0.03, "kl_clip": 1e-3}  # as bench_kfac.py
FACTOR_INTERVAL, INVERSE_INTERVAL = 10, 100
WINDOW = 100  # steps: 10 factor steps and 1 inverse step wherever it starts
CHUNK = 10  # steps of one run timed back to back, the runs interleaved by chunk
GLOBAL_BATCH = 256
NEVER = 10**9  # an interval no run reaches
LAYOUTS = ("shared", "replicated", "owner")
# section 2's extra row: the shared layout with the statistics averaged on every
# factor update (the default averages each rank's moving averages when read)
EVERY_UPDATE = "shared/every_update"
KIND_STEPS = INVERSE_INTERVAL  # one inverse step, 9 other factor steps
TARGET = 1.15  # the bound on K-FAC's step time over SGD's
GLOBAL_BATCHES = (256, 1024, 4096)
# a symmetric eigendecomposition with eigenvectors, about 9 n^3 flops (Golub &
# Van Loan, "Matrix Computations", 4th ed., Sec. 8.3: symmetric QR algorithm);
# torch.utils.flop_counter counts no decompositions
EIGH_FLOPS_PER_N3 = 9.0
# K-FAC variants of section 1, all in the default (shared) layout: the Fisher
# type (MC, the default, samples targets and runs a second backward pass on
# factor steps; empirical, KAISA's default, reuses the loss gradient's backward
# pass), for the CNN the convolution approximation (Eschenhagen et al., 2023,
# Sec. 3: expand, a row per output location; reduce, a row per example), and
# statistics from a fixed-size sample of the global batch (``stats_batch_size``;
# shown only where the batch is larger), which makes the factor steps' cost
# independent of the batch
STATS_ROWS = 256
_EMPIRICAL = {"fisher_type": FisherType.EMPIRICAL}
_REDUCE = {"kfac_approx": KFACApprox.REDUCE}
_SAMPLED = {"stats_batch_size": STATS_ROWS}
VARIANTS: dict[str, tuple[tuple[str, dict[str, object]], ...]] = {
    "mlp": (
        ("mc", {}),
        ("empirical", _EMPIRICAL),
        (f"empirical {STATS_ROWS} rows", _EMPIRICAL | _SAMPLED),
    ),
    "cnn": (
        ("mc expand", {}),
        ("empirical expand", _EMPIRICAL),
        ("empirical reduce", _EMPIRICAL | _REDUCE),
        (f"emp. reduce {STATS_ROWS} rows", _EMPIRICAL | _REDUCE | _SAMPLED),
    ),
}


def _models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "mlp": lambda: mlp(40, 256, 10, depth=2),
        "cnn": lambda: cnn1d(40, 32, 10),
    }


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[1:].numel() if p.ndim > 1 else p.shape[0]
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return model


def _batch(
    name: str, rank: int, world: int, global_batch: int = GLOBAL_BATCH
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (global_batch, 40) if name == "mlp" else (global_batch, 1, 40)
    x = torch.randn(shape, generator=gen)
    y = torch.randint(0, 10, (global_batch,), generator=gen)
    n = global_batch // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


class Run:
    """One DDP model and its optimizer, stepping on a fixed local batch."""

    def __init__(self, build: Callable[[], nn.Module], kind: str, **kw: object):
        self.model = _seeded(build(), 1)
        self.net = DistributedDataParallel(self.model)
        if kind == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=0.01, momentum=0.9
            )
        else:
            self.opt = KFAC(self.net, inverse_layout=kind, **{**KFAC_KW, **kw})

    def steps(self, x: Tensor, y: Tensor, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad()
            F.cross_entropy(self.net(x), y).backward()
            self.opt.step()

    def sent(self) -> dict[str, int]:
        ctx = self.opt.distributed if isinstance(self.opt, KFAC) else None
        return {} if ctx is None else dict(ctx.comm_bytes)


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _timed_cpu(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall and main-thread CPU seconds of ``fn``, each the slower rank's."""
    dist.barrier()
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    c1, t1 = time.thread_time(), time.perf_counter()
    return _slowest(t1 - t0), _slowest(c1 - c0)


def _flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flop_floor(run: Run, x: Tensor, y: Tensor) -> float:
    """``1 + P/F`` on the slower rank: a non-factor K-FAC step's flops (P, this
    rank's solves: every block's, or its own in the ``owner`` layout) over a
    forward and backward's (F) at this batch, both counted by
    ``torch.utils.flop_counter`` (collective: every rank calls it). What the
    every-step preconditioning alone costs relative to SGD if every flop ran at
    the same speed and nothing else did."""
    assert isinstance(run.opt, KFAC)
    while run.opt.steps % FACTOR_INTERVAL == 0 or run.opt.steps % INVERSE_INTERVAL == 0:
        run.steps(x, y, 1)
    run.opt.zero_grad()
    fwd_bwd = _flops(lambda: F.cross_entropy(run.net(x), y).backward())
    step = _flops(run.opt.step)
    ratio = torch.tensor([step / fwd_bwd], dtype=torch.float64)
    dist.all_reduce(ratio, op=dist.ReduceOp.MAX)
    return 1.0 + float(ratio)


def _decomposition_flops(opt: KFAC, world: int) -> float:
    """Estimated flops of this rank's decompositions on an inverse step: its
    share of the blocks (:func:`assign_owners`), or every block in the
    ``replicated`` layout."""
    costs = {k: decomposition_cost(f) for k, f in opt.factors().items()}
    owners = assign_owners(costs, world)
    rank = dist.get_rank()
    every = opt.config.inverse_layout == "replicated"
    return EIGH_FLOPS_PER_N3 * sum(
        c for k, c in costs.items() if every or owners[k] == rank
    )


def _kind(step: int) -> str:
    """What K-FAC does on optimizer step ``step``."""
    if step % INVERSE_INTERVAL == 0:
        return "inverse"
    return "factor" if step % FACTOR_INTERVAL == 0 else "plain"


def kind_flops(run: Run, x: Tensor, y: Tensor) -> dict[str, float]:
    """Flops of the next step of each kind (forward, backward and step; the
    decompositions at ``EIGH_FLOPS_PER_N3``), the slower rank's; advances the
    run to the next inverse step and past it."""
    assert isinstance(run.opt, KFAC)
    world = dist.get_world_size()
    counted: dict[str, float] = {}
    while len(counted) < 3:
        kind = _kind(run.opt.steps)
        if kind in counted:
            run.steps(x, y, 1)
            continue
        counted[kind] = _flops(lambda: run.steps(x, y, 1))
        if kind == "inverse":
            counted[kind] += _decomposition_flops(run.opt, world)
    names = sorted(counted)
    flops = torch.tensor([counted[k] for k in names], dtype=torch.float64)
    dist.all_reduce(flops, op=dist.ReduceOp.MAX)
    return dict(zip(names, flops.tolist(), strict=True))


def window_floors(
    run: Run, sgd_flops: int, x: Tensor, y: Tensor
) -> tuple[float, float]:
    """The flop floors of a fresh K-FAC run, the slower rank's, over an SGD
    step's flops (``sgd_flops``; forward, backward and update): ``plain``, a
    step without factors or inverses (forward, backward, the two products per
    block); ``window``, the mean over a window of ``INVERSE_INTERVAL`` steps
    (plain steps, factor steps with their statistics -- and for MC the second
    backward pass --, one inverse step with the decompositions at
    ``EIGH_FLOPS_PER_N3``). Counts steps 0 (inverse), 1 (plain) and
    ``FACTOR_INTERVAL`` (factor) with ``torch.utils.flop_counter``, so the run
    is left at step ``FACTOR_INTERVAL + 1``. What K-FAC costs relative to SGD
    if every flop ran at the same speed and nothing else took time.
    """
    assert isinstance(run.opt, KFAC) and run.opt.steps == 0
    inverse = _flops(lambda: run.steps(x, y, 1))
    inverse += _decomposition_flops(run.opt, dist.get_world_size())
    plain = _flops(lambda: run.steps(x, y, 1))
    run.steps(x, y, FACTOR_INTERVAL - 2)
    factor = _flops(lambda: run.steps(x, y, 1))
    per_window = INVERSE_INTERVAL // FACTOR_INTERVAL  # factor steps per window
    mix = (
        (INVERSE_INTERVAL - per_window) * plain + (per_window - 1) * factor + inverse
    ) / INVERSE_INTERVAL
    floors = torch.tensor([plain / sgd_flops, mix / sgd_flops], dtype=torch.float64)
    dist.all_reduce(floors, op=dist.ReduceOp.MAX)
    return float(floors[0]), float(floors[1])


def step_kinds(run: Run, x: Tensor, y: Tensor, steps: int) -> dict[str, float]:
    """Median main-thread CPU ms of each kind of step, the slower rank's: ``sgd``
    for SGD, else K-FAC's ``plain``, ``factor`` and ``inverse`` steps (an
    inverse step is also a factor step)."""
    kinds: dict[str, list[float]] = {}
    for _ in range(steps):
        kind = _kind(run.opt.steps) if isinstance(run.opt, KFAC) else "sgd"
        c0 = time.thread_time()
        run.steps(x, y, 1)
        kinds.setdefault(kind, []).append(time.thread_time() - c0)
    names = sorted(kinds)
    med = torch.tensor([statistics.median(kinds[k]) for k in names])
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return {k: float(v) * 1e3 for k, v in zip(names, med, strict=True)}


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def _kinds_lines(runs: dict[str, Run], x: Tensor, y: Tensor) -> list[str]:
    """Where K-FAC's time goes: each kind of step against an SGD step, and their
    mix over a window (``INVERSE_INTERVAL`` steps); next to each, its flops
    against an SGD step's (what it would cost if every flop ran at the same
    speed; the time above that is the overhead: Python, memory, collectives)."""
    sgd = step_kinds(runs["sgd"], x, y, KIND_STEPS // 2)["sgd"]
    sgd_flops = _flops(lambda: runs["sgd"].steps(x, y, 1))
    lines = [
        f"    per kind of step (main-thread CPU ms, medians of {KIND_STEPS} steps, "
        f"the slower rank; in brackets the ratio to sgd, time / flops): sgd {sgd:.2f}"
    ]
    per_window = INVERSE_INTERVAL // FACTOR_INTERVAL  # factor steps per window

    def mix(t: dict[str, float]) -> float:
        return (
            (INVERSE_INTERVAL - per_window) * t["plain"]
            + (per_window - 1) * t["factor"]
            + t["inverse"]
        ) / INVERSE_INTERVAL

    for key in LAYOUTS:
        t = step_kinds(runs[key], x, y, KIND_STEPS)
        f = {k: v / sgd_flops for k, v in kind_flops(runs[key], x, y).items()}
        parts = ", ".join(
            f"{k} {t[k]:.2f} ({t[k] / sgd:.2f}x / {f[k]:.2f}x)"
            for k in ("plain", "factor", "inverse")
        )
        lines.append(
            f"      {key:<10} {parts}; their mix {mix(t):.2f} ms/step = "
            f"{mix(t) / sgd:.2f}x / {mix(f):.2f}x"
        )
    return lines


def _rounds(
    runs: dict[str, Run], x: Tensor, y: Tensor, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict[str, int]]]:
    """Per run, the wall and main-thread CPU seconds (the slower rank's) of
    ``rounds`` windows of ``WINDOW`` steps, and the bytes each K-FAC run sent in
    its last window, by kind. Within a round the runs are interleaved in chunks
    of ``CHUNK`` consecutive steps (each chunk timed between barriers, a
    window's time the sum of its chunks'), so that every run sees the same load
    of the shared machine, while the steps within a chunk run back to back as
    in training."""
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    sent: dict[str, dict[str, int]] = {}
    keys = list(runs)
    for _ in range(rounds):
        before = {key: run.sent() for key, run in runs.items()}
        w = dict.fromkeys(keys, 0.0)
        c = dict.fromkeys(keys, 0.0)
        for _ in range(WINDOW // CHUNK):
            for key, run in runs.items():
                dist.barrier()
                t0, c0 = time.perf_counter(), time.thread_time()
                run.steps(x, y, CHUNK)
                c[key] += time.thread_time() - c0
                w[key] += time.perf_counter() - t0
        totals = torch.tensor(
            [w[k] for k in keys] + [c[k] for k in keys], dtype=torch.float64
        )
        dist.all_reduce(totals, op=dist.ReduceOp.MAX)
        for i, key in enumerate(keys):
            wall[key].append(float(totals[i]))
            cpu[key].append(float(totals[len(keys) + i]))
            after = runs[key].sent()
            sent[key] = {k: after[k] - before[key].get(k, 0) for k in after}
    return wall, cpu, sent


def _ratios(times: dict[str, list[float]], key: str) -> list[float]:
    """``key``'s time over SGD's within each round (side by side)."""
    return [t / s for t, s in zip(times[key], times["sgd"], strict=True)]


def conv_factor_paths(model: nn.Module, x: Tensor) -> str:
    """Which expand input factor each convolution forms on this rank's batch
    (:func:`~kfac_spectra.kfac.blocks.conv.prefer_lagged`: the lagged channel
    correlations, or the Gram matrix of the unfolded patches)."""
    paths: dict[str, bool] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: paths.__setitem__(
                name, prefer_lagged(args[0], m)
            )
        )
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d))
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return ", ".join(
        f"{name} {'lagged correlations' if lagged else 'unfolded patches'}"
        for name, lagged in paths.items()
    )


def _verdict(cpu: float, wall: float, floor: float) -> tuple[str, str]:
    """Whether the medians meet ``TARGET`` and, where not, why: ``met``,
    ``cpu`` (in CPU time only), ``floor`` (CPU time above it, and the window
    flop floor above it too) or ``rest`` (CPU time above it, above a floor that
    allows it)."""
    if cpu <= TARGET and wall <= TARGET:
        return "met", "met (CPU and wall)"
    if cpu <= TARGET:
        return "cpu", f"CPU only (wall {wall:.2f}x)"
    if floor > TARGET:
        return "floor", f"no: flop floor {floor:.2f}x > {TARGET}x"
    return "rest", f"no: {cpu - floor:+.2f}x above the floor"


def batch_section(rank: int, world: int, batches: list[int], rounds: int) -> list[str]:
    """Section 1: K-FAC (shared layout) over SGD at each global batch, per
    variant, with the flop floors; and where ``TARGET`` is met."""
    lines = [
        f"1. K-FAC({FACTOR_INTERVAL}, {INVERSE_INTERVAL}), shared layout, over DDP "
        f"SGD at the same global batch, {world} ranks, windows of {WINDOW} steps, "
        f"{rounds} rounds (medians, range); {_load()} at the start",
        "   model global variant                 K-FAC ms  wall/sgd (rounds)     "
        "CPU/sgd (rounds)     floor plain window  <= "
        f"{TARGET}x",
    ]
    kfac_kw = {"factor_interval": FACTOR_INTERVAL, "inverse_interval": INVERSE_INTERVAL}
    outcome: dict[str, list[str]] = {"met": [], "cpu": [], "floor": [], "rest": []}
    for name, build in _models().items():
        for gb in batches:
            x, y = _batch(name, rank, world, gb)
            runs = {"sgd": Run(build, "sgd")}
            sgd_flops = _flops(lambda r=runs["sgd"], x=x, y=y: r.steps(x, y, 1))
            runs["sgd"].steps(x, y, FACTOR_INTERVAL)  # the same warm-up
            floors = {}
            variants = [
                (label, kw)
                for label, kw in VARIANTS[name]
                if "stats_batch_size" not in kw or kw["stats_batch_size"] < gb
            ]
            for label, kw in variants:
                runs[label] = Run(build, "shared", **kfac_kw, **kw)
                floors[label] = window_floors(runs[label], sgd_flops, x, y)
            wall, cpu, _ = _rounds(runs, x, y, rounds)
            if name == "cnn":
                lines.append(
                    f"   cnn   {gb:6d} expand input factors ({x.shape[0]} examples "
                    f"per rank): {conv_factor_paths(runs['sgd'].model, x)}"
                )
            for label, _ in variants:
                rw, rc = _ratios(wall, label), _ratios(cpu, label)
                mw, mc = statistics.median(rw), statistics.median(rc)
                plain, window = floors[label]
                kind, text = _verdict(mc, mw, window)
                outcome[kind].append(
                    f"{name} {gb} {label} (CPU {mc:.2f}x, wall {mw:.2f}x, "
                    f"floor {window:.2f}x)"
                )
                ms = statistics.median(wall[label]) / WINDOW * 1e3
                lines.append(
                    f"   {name:<5} {gb:6d} {label:<22} {ms:8.2f}  {mw:5.2f}x "
                    f"({min(rw):.2f}-{max(rw):.2f})  {mc:5.2f}x "
                    f"({min(rc):.2f}-{max(rc):.2f})  {plain:5.2f}x {window:5.2f}x  "
                    f"{text}"
                )
    lines.append(f"   {_load()} at the end")
    titles = {
        "met": f"<= {TARGET}x met",
        "cpu": "met in main-thread CPU time, not in wall time (communication, load)",
        "floor": f"not met, the window flop floor above {TARGET}x",
        "rest": f"not met above a floor below {TARGET}x",
    }
    for kind, title in titles.items():
        lines.append(f"   {title}: " + ("; ".join(outcome[kind]) or "none"))
    return lines


def step_section(rank: int, world: int, rounds: int) -> list[str]:
    lines = [
        f"2. layouts: step time and bytes sent, {world} ranks, global batch {GLOBAL_BATCH}, "
        f"K-FAC({FACTOR_INTERVAL}, {INVERSE_INTERVAL}), windows of {WINDOW} steps, "
        f"{rounds} rounds; {_load()} at the start"
    ]
    kfac_kw = {"factor_interval": FACTOR_INTERVAL, "inverse_interval": INVERSE_INTERVAL}
    for name, build in _models().items():
        x, y = _batch(name, rank, world)
        runs = {"sgd": Run(build, "sgd")}
        runs |= {layout: Run(build, layout, **kfac_kw) for layout in LAYOUTS}
        runs[EVERY_UPDATE] = Run(
            build, "shared", factor_sync=FactorSync.EVERY_UPDATE, **kfac_kw
        )
        for run in runs.values():  # warm-up: the first factors and inverses
            run.steps(x, y, WINDOW)
        wall, cpu, sent = _rounds(runs, x, y, rounds)
        grad_bytes = sum(
            p.numel() * p.element_size() for p in runs["sgd"].model.parameters()
        )

        med = {k: statistics.median(v) / WINDOW * 1e3 for k, v in wall.items()}
        med_cpu = {k: statistics.median(v) / WINDOW * 1e3 for k, v in cpu.items()}
        lines.append(
            f"  {name}: sgd {med['sgd']:.2f} ms/step wall, {med_cpu['sgd']:.2f} ms "
            f"CPU; gradient all-reduced by DDP {grad_bytes / 1e3:.1f} kB/step"
        )
        lines.append(
            "    layout               wall ms  /sgd (rounds)       CPU ms  /sgd "
            "(rounds)       flop floor  sent kB/step (/gradient)"
        )
        for key in (*LAYOUTS, EVERY_UPDATE):
            rw, rc = _ratios(wall, key), _ratios(cpu, key)
            floor = flop_floor(runs[key], x, y)
            per_step = {k: v / WINDOW for k, v in sent[key].items()}
            total = sum(per_step.values())
            lines.append(
                f"    {key:<19} {med[key]:7.2f} {statistics.median(rw):5.2f}x "
                f"({min(rw):.2f}-{max(rw):.2f}) {med_cpu[key]:7.2f} "
                f"{statistics.median(rc):5.2f}x ({min(rc):.2f}-{max(rc):.2f}) "
                f"{floor:8.2f}x  {total / 1e3:8.1f} ({total / grad_bytes:.3f}x)"
            )
            parts = ", ".join(f"{k} {v / 1e3:.2f}" for k, v in per_step.items() if v)
            lines.append(f"        sent by kind (kB/step): {parts or 'none'}")
        lines += _kinds_lines(runs, x, y)
    lines.append(f"  {_load()} at the end")
    return lines


def inverse_section(rank: int, world: int, blocks: int, width: int, reps: int) -> str:
    gen = torch.Generator().manual_seed(2)
    n = 64
    x = torch.randn(GLOBAL_BATCH, width, generator=gen)
    y = torch.randint(0, width, (GLOBAL_BATCH,), generator=gen)
    x, y = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]

    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [nn.Linear(width, width), nn.Tanh()]
        return nn.Sequential(*layers)

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for layout in ("replicated", "shared", "owner"):
        # factors once (step 0); inverses every step or never
        with_inv = Run(build, layout, factor_interval=NEVER, inverse_interval=1)
        without = Run(build, layout, factor_interval=NEVER, inverse_interval=NEVER)
        for run in (with_inv, without):
            run.steps(x, y, 2)
        wall[layout], cpu[layout] = [], []
        for _ in range(reps):
            w1, c1 = _timed_cpu(lambda r=with_inv: r.steps(x, y, 1))
            w0, c0 = _timed_cpu(lambda r=without: r.steps(x, y, 1))
            wall[layout].append(w1 - w0)
            cpu[layout].append(c1 - c0)
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    lines = [
        f"3. inverse update per rank, {blocks} blocks {width}x{width} "
        f"({blocks * 2} factors of {width + 1} and {width}), {world} ranks, "
        f"{reps} reps (the slower rank), against replicated (ideal {world}x):"
    ]
    for what, times in (("main-thread CPU", med_cpu), ("wall", med)):
        lines.append(
            f"   {what:<15}: replicated {times['replicated']:.1f} ms, "
            + ", ".join(
                f"{k} {times[k]:.1f} ms ({times['replicated'] / times[k]:.2f}x less)"
                for k in ("shared", "owner")
            )
        )
    return "\n".join(lines)


def _worker(rank: int, world: int, args: argparse.Namespace) -> None:
    lines = []
    if not args.inverse_only:
        lines += batch_section(rank, world, args.global_batch, args.rounds)
        lines += step_section(rank, world, args.rounds)
    lines.append(
        inverse_section(rank, world, args.blocks, args.width, args.inverse_reps)
    )
    if rank == 0:
        print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--global-batch",
        type=int,
        nargs="+",
        default=list(GLOBAL_BATCHES),
        help="global batch sizes of section 1 (each divisible by --ranks)",
    )
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--inverse-reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--inverse-only", action="store_true", help="only the inverse update (3.)"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.blocks, args.width, args.inverse_reps = 1, 4, 64, 2
        args.global_batch = [GLOBAL_BATCH]
    bad = [b for b in args.global_batch if b < args.ranks or b % args.ranks]
    if args.ranks < 1 or bad:
        parser.error(
            f"--global-batch {bad} must be positive multiples of --ranks {args.ranks}"
        )
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    spawn_local(_worker, args.ranks, args, threads=args.threads)


if __name__ == "__main__":
    main()
