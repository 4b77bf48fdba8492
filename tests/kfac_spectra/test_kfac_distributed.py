"""Data-parallel K-FAC on torch.distributed (gloo, 2 and 3 local processes).

The oracle is one process on the concatenated global batch: W ranks, each with
its slice, must follow the same trajectory (to rounding), in every inverse
layout (decompositions shared, replicated, or kept by their owners, which send
the preconditioned gradients), with the model wrapped in DDP or plain with the
gradients all-reduced by hand. Spawning processes is slow, so each spawn runs many
scenarios and the parent checks them all.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kfac_spectra import KFAC
from kfac_spectra.kfac.distributed import (
    DistContext,
    InverseLayout,
    assign_owners,
    decomposition_cost,
    resolve_process_group,
)
from kfac_spectra.kfac.inverse import CholeskyInverse, Damping, EigenInverse
from kfac_spectra.launch import spawn_local

DT = torch.float64
PARITY_RTOL = 1e-10  # W ranks vs one process on the global batch, 20 steps
STEPS = 20
SEQ = 4
VOCAB = 7
DIM = 5
MC_STEPS = 240  # independent MC estimates of S (one per step)
MC_Z = 5.0  # z-score bound per entry (Bonferroni over a few dozen entries)
SPAWN_TIMEOUT_S = 240


# ------------------------------------------------------------------ models
class Mixed(nn.Module):
    """Every block kind: Embedding, a tied embedding/head, LSTM, Conv1d, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(SEQ, DIM)
        self.lstm = nn.LSTM(DIM, DIM, batch_first=True)
        self.conv = nn.Conv1d(DIM, DIM, 3, padding=1)
        self.fc = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB)
        self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1]).expand_as(idx)
        h, _ = self.lstm(self.emb(idx) + self.pos(pos))
        h = torch.tanh(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.head(torch.tanh(self.fc(h)))


class Chain(nn.Module):
    """An embedding, then a chain of linear layers (block-tridiagonal K-FAC)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mlp = nn.Sequential(
            nn.Linear(DIM, DIM), nn.Tanh(), nn.Linear(DIM, DIM), nn.Tanh(),
            nn.Linear(DIM, VOCAB),
        )  # fmt: skip

    def forward(self, idx: Tensor) -> Tensor:
        return self.mlp(self.emb(idx))


class Small(nn.Module):
    """A float-input model (conv + MLP) for the non-finite input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _init(model: nn.Module, seed: int) -> nn.Module:
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.5)
    return model


def _mixed_batches(seed: int, n: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, VOCAB, (n, SEQ), generator=gen),
            torch.randint(0, VOCAB, (n, SEQ), generator=gen),
        )
        for _ in range(steps)
    ]


def _small_batches(seed: int, n: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(n, 2, 6, generator=gen, dtype=DT)
        out.append((x, torch.randint(0, 4, (n,), generator=gen)))
    return out


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ------------------------------------------------------------- scenarios
# every scenario is run by the ranks on their slices and by one process on the
# whole batch; options common to both, then how the ranks run it
def _scenario(
    layout: str,
    *,
    ddp: bool,
    model: type[nn.Module] = Mixed,
    closure: bool = False,
    **kfac: Any,
) -> dict[str, Any]:
    """A scenario: its K-FAC options, the model class, DDP or a hand all-reduce,
    and whether ``step`` gets a closure (LM damping)."""
    return {
        "kfac": {"inverse_layout": layout, **kfac},
        "ddp": ddp,
        "model": model,
        "closure": closure,
    }


QMODEL = {
    "step_rule": "qmodel",
    "adapt_damping": True,
    "lm_interval": 2,
    "stats_batch_size": 6,
    "damping": 1e-1,
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "type2_shared_ddp": _scenario("shared", ddp=True, fisher_type="type2"),
    "type2_replicated_plain": _scenario("replicated", ddp=False, fisher_type="type2"),
    "type2_owner_ddp": _scenario("owner", ddp=True, fisher_type="type2"),
    # the statistics averaged on every factor update (the default averages
    # each rank's moving averages when read, here before each inverse update)
    "type2_every_update_ddp": _scenario(
        "shared", ddp=True, fisher_type="type2", factor_sync="every_update"
    ),
    # a checkpoint at step 10 while the factors changed at step 9 since their
    # last average (inverse update at step 8): state_dict averages them first
    "empirical_unsynced_shared_ddp": _scenario(
        "shared", ddp=True, fisher_type="empirical", inverse_interval=4
    ),
    "empirical_shared_plain": _scenario("shared", ddp=False, fisher_type="empirical"),
    "empirical_replicated_ddp": _scenario(
        "replicated", ddp=True, fisher_type="empirical"
    ),
    "empirical_owner_plain": _scenario("owner", ddp=False, fisher_type="empirical"),
    "chain_cholesky_shared_ddp": _scenario(
        "shared",
        ddp=True,
        fisher_type="type2",
        inverse_method="cholesky",
        rnn_approx="chain",
    ),
    "chain_tikhonov_owner_plain": _scenario(
        "owner",
        ddp=False,
        fisher_type="type2",
        rnn_approx="chain",
        damping_type="tikhonov",
    ),
    "qmodel_lm_stats_shared_ddp": _scenario(
        "shared", ddp=True, closure=True, fisher_type="type2", **QMODEL
    ),
    "qmodel_lm_stats_owner_ddp": _scenario(
        "owner", ddp=True, closure=True, fisher_type="type2", **QMODEL
    ),
    "tridiagonal_shared_ddp": _scenario(
        "shared",
        ddp=True,
        model=Chain,
        fisher_type="type2",
        structure="block_tridiagonal",
    ),
    "tridiagonal_owner_ddp": _scenario(
        "owner",
        ddp=True,
        model=Chain,
        fisher_type="type2",
        structure="block_tridiagonal",
    ),
}
BASE_KFAC = {
    "loss": "ce",
    "lr": 0.1,
    "damping": 1e-2,
    "factor_interval": 1,
    "inverse_interval": 3,
    "factor_decay": 0.9,
    "seed": 3,
}
GLOBAL_BATCH = 6  # divisible by 2 and 3
#: The tridiagonal scenario's embedding stays block-diagonal, as K-FAC warns
#: (that warning is asserted in test_kfac_tridiagonal).
TRIDIAGONAL_WARNS = pytest.mark.filterwarnings(
    "ignore:K-FAC. structure='block_tridiagonal' keeps"
)


def _optimizer(model: nn.Module, spec: dict[str, Any], **extra: Any) -> KFAC:
    return KFAC(model, **{**BASE_KFAC, **spec["kfac"], **extra})


def _run(
    model: nn.Module,
    net: nn.Module,
    opt: KFAC,
    batches: list[tuple[Tensor, Tensor]],
    *,
    closure: bool = False,
    allreduce: bool = False,
    pass_loss: bool = False,
) -> None:
    """Train on ``batches`` (this rank's slices); ``net`` is what is called
    (DDP or the model), ``allreduce`` averages the gradients by hand."""
    for x, y in batches:
        opt.zero_grad()
        value = _ce(net(x), y)
        value.backward()
        if allreduce:
            world = dist.get_world_size()
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        if closure:

            def evaluate(x: Tensor = x, y: Tensor = y) -> Tensor:
                return _ce(net(x), y)

            opt.step(evaluate)
        elif pass_loss:
            opt.step(loss=value.detach())
        else:
            opt.step()


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _slice(
    batches: list[tuple[Tensor, Tensor]], rank: int, world: int
) -> list[tuple[Tensor, Tensor]]:
    n = batches[0][0].shape[0] // world
    return [
        (x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]) for x, y in batches
    ]


def single_process(name: str, steps: int = STEPS) -> Tensor:
    """The oracle: one process on the global batch; its parameters."""
    return _single(name, steps)[0]


def _single(name: str, steps: int = STEPS) -> tuple[Tensor, set[str]]:
    """One process on the global batch: its parameters and the blocks whose
    decompositions it holds."""
    spec = SCENARIOS[name]
    model = _init(spec["model"](), 1)
    opt = _optimizer(model, spec, process_group=False)
    _run(
        model,
        model,
        opt,
        _mixed_batches(2, GLOBAL_BATCH, steps),
        closure=spec["closure"],
    )
    return _flat(model), set(opt.held_inverses)


# ------------------------------------------------------------ rank worker
def _rank_scenarios(rank: int, world: int, out: Path, names: list[str]) -> None:
    for name in names:
        spec = SCENARIOS[name]
        model = _init(spec["model"](), 1)
        net = DistributedDataParallel(model) if spec["ddp"] else model
        opt = _optimizer(net, spec)
        batches = _slice(_mixed_batches(2, GLOBAL_BATCH, STEPS), rank, world)
        _run(
            model,
            net,
            opt,
            batches,
            closure=spec["closure"],
            allreduce=not spec["ddp"],
        )
        torch.save(_flat(model), out / f"{name}-{rank}.pt")
        torch.save(set(opt.held_inverses), out / f"{name}-held-{rank}.pt")


NONFINITE_LAYOUTS = ("shared", "owner")
NONFINITE_KFAC = {
    "loss": "ce",
    "fisher_type": "type2",
    "lr": 0.1,
    "damping": 1e-2,
    "inverse_interval": 2,
}


def _rank_nonfinite(rank: int, world: int, out: Path) -> None:
    """Rank 1's input is NaN on step 3: every rank skips it, in sync (in each
    layout that sends something)."""
    for layout in NONFINITE_LAYOUTS:
        model = _init(Small(), 4)
        net = DistributedDataParallel(model)
        opt = KFAC(net, **NONFINITE_KFAC, inverse_layout=layout)
        batches = _slice(_nan_batches(), rank, world)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _run(model, net, opt, batches, pass_loss=True)
        torch.save(
            {"params": _flat(model), "skipped": opt.counters["skipped_steps"]},
            out / f"nonfinite-{layout}-{rank}.pt",
        )


def _nan_batches() -> list[tuple[Tensor, Tensor]]:
    batches = _small_batches(5, GLOBAL_BATCH, 8)
    x, _ = batches[3]
    x[-1, 0, 0] = float("nan")  # in the last rank's slice
    return batches


# saved and resumed
CHECKPOINTED = ("type2_shared_ddp", "type2_owner_ddp", "empirical_unsynced_shared_ddp")
CHECKPOINTS = [f"checkpoint:{name}" for name in CHECKPOINTED]


def _rank_checkpoint(rank: int, world: int, out: Path, name: str) -> None:
    """Save at step 10 (every rank takes the state, rank 0 writes), continue to
    20; and resume from a single-process checkpoint at step 10."""
    spec = SCENARIOS[name]
    batches = _slice(_mixed_batches(2, GLOBAL_BATCH, STEPS), rank, world)
    model = _init(Mixed(), 1)
    net = DistributedDataParallel(model)
    opt = _optimizer(net, spec)
    _run(model, net, opt, batches[:10])
    state = {"model": model.state_dict(), "opt": opt.state_dict()}
    if rank == 0:
        torch.save(state, out / f"ckpt-dist-{name}.pt")
    _run(model, net, opt, batches[10:])
    torch.save(_flat(model), out / f"ckpt-continued-{name}-{rank}.pt")
    # resume the single process's checkpoint on these ranks
    state = torch.load(out / f"ckpt-single-{name}.pt", weights_only=False)
    model = _init(Mixed(), 9)
    model.load_state_dict(state["model"])
    net = DistributedDataParallel(model)
    opt = _optimizer(net, spec)
    opt.load_state_dict(state["opt"])
    _run(model, net, opt, batches[10:])
    torch.save(_flat(model), out / f"ckpt-resumed-{name}-{rank}.pt")


def _rank_mc(rank: int, world: int, out: Path) -> None:
    """``MC_STEPS`` independent distributed MC estimates of every S (lr = 0).

    On the per-example model: there every row of a layer's output feeds one loss
    term, so the type-2 factor is the exact expectation of the MC one (with a
    recurrent layer the type-2 probes, shared by all terms of a sequence, add
    cross-term products that the MC expectation does not have).
    """
    model = _init(Small(), 4)
    net = DistributedDataParallel(model)
    opt = KFAC(net, loss="ce", fisher_type="mc", lr=0.0, factor_decay=0.0, seed=11)
    ((x, y),) = _slice(_small_batches(5, GLOBAL_BATCH, 1), rank, world)
    samples = []
    for _ in range(MC_STEPS):
        opt.zero_grad()
        _ce(net(x), y).backward()
        opt.step()
        samples.append(_s_statistics(opt))
    if rank == 0:
        torch.save(torch.stack(samples), out / "mc.pt")


def _s_statistics(opt: KFAC) -> Tensor:
    """Every output-side batch statistic (S, and a tied weight's Se, Sh), flat."""
    ema = opt.state_dict()["kfac"]["ema"]
    return torch.cat(
        [
            t.reshape(-1)
            for key in sorted(ema)
            for n, t in sorted(ema[key].items())
            if n.startswith("S")
        ]
    )


def _rank_bad_batch(rank: int, world: int, out: Path) -> None:
    """Ranks with different local batch sizes: the same error on every rank."""
    model = _init(Small(), 4)
    opt = KFAC(model, loss="ce", fisher_type="type2")
    x, y = _small_batches(5, 2 + rank, 1)[0]
    F.cross_entropy(model(x), y).backward()
    try:
        opt.step()
        message = ""
    except ValueError as err:
        message = str(err)
    torch.save(message, out / f"bad-{rank}.pt")


def _context_stats(rank: int) -> list[tuple[str, dict[str, Tensor] | None]]:
    """Rank-dependent statistics: block "b" is missing on rank 1."""
    gen = torch.Generator().manual_seed(100 + rank)
    a = {
        "A": torch.randn(3, 3, generator=gen, dtype=DT),
        "S": torch.randn(2, 2, generator=gen, dtype=DT),
    }
    b = {
        "A": torch.randn(4, generator=gen, dtype=DT),
        "S": torch.randn(2, 2, generator=gen),
    }
    return [("a", a), ("b", None if rank == 1 else b)]


def _rank_context(rank: int, world: int, out: Path) -> None:
    """DistContext directly: statistics missing on one rank, shared decompositions."""
    ctx = DistContext(dist.group.WORLD, InverseLayout.SHARED)
    ctx.count_rows(4)
    reduced = ctx.reduce_statistics(_context_stats(rank))
    # the vote: "a" non-finite on the last rank only, "b" missing on rank 1
    ctx.count_rows(4)
    agreed = ctx.agree(_context_stats(rank), [rank == world - 1, False])
    owners = {"x": 0, "y": 1 % world}
    gen = torch.Generator().manual_seed(7)
    made = {
        "x": EigenInverse(
            *(torch.randn(s, generator=gen, dtype=DT) for s in [(2,), (2, 2), (3,)]),
            None,
        ),
        "y": CholeskyInverse(
            torch.randn(2, 2, generator=gen), torch.randn(3, 3, generator=gen)
        ),
    }
    made["x"].two_sided(Damping(True, 0.1))  # damped inverses travel along
    local = {k: v for k, v in made.items() if owners[k] == rank}
    shared = ctx.share_inverses(local, owners, torch.device("cpu"))
    # directions: each rank's own blocks filled in, the others' NaN until
    # received; "y" fails on its owner
    built = ctx.agree_built({k: k != "y" for k in owners if owners[k] == rank}, owners)
    targets = [(k, torch.full(shape, math.nan, dtype=DT)) for k, shape in DIRECTIONS]
    for key, target in targets:
        if owners.get(key, 0) == rank:
            target.copy_(_direction(key))
    before = ctx.comm_bytes["directions"]
    ctx.share_directions(dict(targets), targets, {**owners, "z": 0})
    torch.save(
        {
            "reduced": reduced,
            "agreed": agreed,
            "mismatched": ctx.mismatched_batches,
            "made": made,
            "shared": shared,
            "damped": shared["x"].damped_inverses,
            "built": built,
            "directions": dict(targets),
            "direction_bytes": ctx.comm_bytes["directions"] - before,
        },
        out / f"context-{rank}.pt",
    )


DIRECTIONS = [("x", (2, 3)), ("y", (4,)), ("z", (1, 5))]


def _direction(key: str) -> Tensor:
    """Block ``key``'s preconditioned gradient in the DistContext test."""
    shape = dict(DIRECTIONS)[key]
    gen = torch.Generator().manual_seed(ord(key))
    return torch.randn(shape, generator=gen, dtype=DT)


def _worker(rank: int, world: int, out: str, jobs: list[str]) -> None:
    path = Path(out)
    for job in jobs:
        if job == "nonfinite":
            _rank_nonfinite(rank, world, path)
        elif job.startswith("checkpoint:"):
            _rank_checkpoint(rank, world, path, job.split(":")[1])
        elif job == "mc":
            _rank_mc(rank, world, path)
        elif job == "bad_batch":
            _rank_bad_batch(rank, world, path)
        elif job == "context":
            _rank_context(rank, world, path)
        else:
            _rank_scenarios(rank, world, path, [job])


def _spawn(world: int, out: Path, jobs: list[str]) -> None:
    spawn_local(_worker, world, str(out), jobs)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ tests
def _single_checkpoint(out: Path) -> None:
    for name in CHECKPOINTED:
        model = _init(Mixed(), 1)
        opt = _optimizer(model, SCENARIOS[name], process_group=False)
        _run(model, model, opt, _mixed_batches(2, GLOBAL_BATCH, 10))
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict()},
            out / f"ckpt-single-{name}.pt",
        )


def _resume_single(out: Path, name: str) -> Tensor:
    state = torch.load(out / f"ckpt-dist-{name}.pt", weights_only=False)
    model = _init(Mixed(), 9)
    model.load_state_dict(state["model"])
    opt = _optimizer(model, SCENARIOS[name], process_group=False)
    opt.load_state_dict(state["opt"])
    _run(model, model, opt, _mixed_batches(2, GLOBAL_BATCH, STEPS)[10:])
    return _flat(model)


def _check_resumed(out: Path, world: int) -> None:
    """W ranks -> 1 process, and 1 process -> W ranks, in each checkpointed
    scenario: the trajectory of the uninterrupted run."""
    for name in CHECKPOINTED:
        # every decomposition is in the checkpoint, each tensor with only its
        # own values (not a view of a received buffer's whole storage)
        saved = torch.load(out / f"ckpt-dist-{name}.pt", weights_only=False)
        inverses = saved["opt"]["kfac"]["inverses"]
        assert set(inverses) == _single(name, 10)[1], name
        for fields in inverses.values():
            for t in fields.values():
                if isinstance(t, Tensor):
                    assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        continued = torch.load(out / f"ckpt-continued-{name}-0.pt")
        assert _rel(_resume_single(out, name), continued) < PARITY_RTOL, name
        uninterrupted = single_process(name)
        for rank in range(world):
            resumed = torch.load(out / f"ckpt-resumed-{name}-{rank}.pt")
            assert _rel(resumed, uninterrupted) < PARITY_RTOL, (name, rank)
            assert torch.equal(
                torch.load(out / f"ckpt-continued-{name}-{rank}.pt"), continued
            )


def _check_parity(out: Path, world: int, names: list[str]) -> None:
    """Every rank's parameters equal one process's, and each other's bit for
    bit; the decompositions are held by every rank, or in the ``owner`` layout
    each by one (the ranks' sets partition one process's)."""
    for name in names:
        want, want_held = _single(name)
        for rank in range(world):
            got = torch.load(out / f"{name}-{rank}.pt")
            assert _rel(got, want) < PARITY_RTOL, (name, rank, _rel(got, want))
        first = torch.load(out / f"{name}-0.pt")
        for rank in range(1, world):
            assert torch.equal(torch.load(out / f"{name}-{rank}.pt"), first), name
        held = [torch.load(out / f"{name}-held-{r}.pt") for r in range(world)]
        if SCENARIOS[name]["kfac"]["inverse_layout"] == "owner":
            assert sum(len(h) for h in held) == len(want_held), name
            assert set().union(*held) == want_held, name
            if SCENARIOS[name]["model"] is Mixed:  # more blocks than ranks
                assert all(held), name
        else:
            assert all(h == want_held for h in held), name


def _single_nonfinite() -> tuple[Tensor, int]:
    model = _init(Small(), 4)
    opt = KFAC(model, **NONFINITE_KFAC, process_group=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run(model, model, opt, _nan_batches(), pass_loss=True)
    return _flat(model), opt.counters["skipped_steps"]


def _mc_exact() -> Tensor:
    model = _init(Small(), 4)
    opt = KFAC(
        model,
        loss="ce",
        fisher_type="type2",
        lr=0.0,
        factor_decay=0.0,
        process_group=False,
    )
    ((x, y),) = _small_batches(5, GLOBAL_BATCH, 1)
    _ce(model(x), y).backward()
    opt.step()
    return _s_statistics(opt)


@pytest.mark.timeout(SPAWN_TIMEOUT_S)
@TRIDIAGONAL_WARNS
def test_two_ranks_match_one_process_skip_together_and_resume(tmp_path: Path) -> None:
    """2 ranks: parity (type-2 and empirical, the shared, replicated and owner
    layouts, DDP and a hand all-reduce, the quadratic model with LM damping and
    stats_batch_size, KL clipping, Tikhonov damping, chain RNN and
    block-tridiagonal inverses, the statistics averaged when read or on every
    update), a NaN input on one rank, save/resume across world sizes (also
    with factors not yet averaged), the MC estimate's mean, and unequal local
    batches."""
    names = list(SCENARIOS)
    _single_checkpoint(tmp_path)
    _spawn(
        2, tmp_path, [*names, *CHECKPOINTS, "nonfinite", "mc", "bad_batch", "context"]
    )
    _check_parity(tmp_path, 2, names)

    want, skipped = _single_nonfinite()
    assert skipped == 1
    for layout in NONFINITE_LAYOUTS:
        got = [torch.load(tmp_path / f"nonfinite-{layout}-{r}.pt") for r in range(2)]
        assert all(g["skipped"] == 1 for g in got)
        assert torch.equal(got[0]["params"], got[1]["params"])  # bit for bit
        assert _rel(got[0]["params"], want) < PARITY_RTOL

    _check_resumed(tmp_path, 2)

    # MC: the mean of the distributed estimates is the exact (type-2) factor
    samples = torch.load(tmp_path / "mc.pt")
    exact = _mc_exact()
    mean, sd = samples.mean(0), samples.std(0)
    bound = MC_Z * sd / math.sqrt(MC_STEPS) + 1e-12 * exact.abs().max()
    assert bool(((mean - exact).abs() <= bound).all())
    assert float(sd.max()) > 0  # the samples do vary

    for rank in range(2):
        message = torch.load(tmp_path / f"bad-{rank}.pt")
        assert "divisible by the world size" in message

    # DistContext: block "b" (missing on rank 1) dropped on both ranks, "a" the
    # mean; every rank gets the owners' decompositions exactly
    want_a = {
        n: (_context_stats(0)[0][1][n] + _context_stats(1)[0][1][n]) / 2
        for n in ("A", "S")
    }
    for rank in range(2):
        got = torch.load(tmp_path / f"context-{rank}.pt", weights_only=False)
        assert set(got["reduced"]) == {"a"} and got["mismatched"] == 2
        assert got["agreed"] == (["a"], {"a"})  # every rank knows a's NaN
        for n in ("A", "S"):
            torch.testing.assert_close(
                got["reduced"]["a"][n], want_a[n], rtol=1e-15, atol=0
            )
        for key in ("x", "y"):
            made, shared = got["made"][key], got["shared"][key]
            assert type(made) is type(shared)
            for f in dataclasses.fields(made):
                a, b = getattr(made, f.name), getattr(shared, f.name)
                assert (a is None and b is None) or torch.equal(a, b), (key, f.name)
                assert b is None or b.dtype == a.dtype
        assert got["built"] == {"x"}  # "y" failed on rank 1, and all know it
        for key, _ in DIRECTIONS:
            assert torch.equal(got["directions"][key], _direction(key)), key
        # rank 0 sends x and z (2·3 + 5 float64), rank 1 y (4)
        assert got["direction_bytes"] == 8 * (11 if rank == 0 else 4)
        made_damped = got["made"]["x"].damped_inverses
        assert got["damped"][0] == made_damped[0]
        assert all(
            torch.equal(a, b)
            for a, b in zip(got["damped"][1:], made_damped[1:], strict=True)
        )


@pytest.mark.slow
@pytest.mark.timeout(SPAWN_TIMEOUT_S)
@TRIDIAGONAL_WARNS
def test_three_ranks_match_one_process(tmp_path: Path) -> None:
    names = list(SCENARIOS)
    _single_checkpoint(tmp_path)
    _spawn(3, tmp_path, [*names, *CHECKPOINTS])
    _check_parity(tmp_path, 3, names)
    _check_resumed(tmp_path, 3)


def test_requested_group_needs_initialised_distributed() -> None:
    model = _init(Small(), 0)
    with pytest.raises(ValueError, match="process_group=True needs torch.distributed"):
        KFAC(model, process_group=True)
    with pytest.raises(ValueError, match="inverse_layout"):
        KFAC(model, inverse_layout="everywhere")
    assert resolve_process_group(None) is None
    assert resolve_process_group(False) is None


def test_assignment_is_longest_processing_time_first() -> None:
    costs = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 2.0, "f": 1.0}
    owners = assign_owners(costs, 2)
    # LPT by hand: a->0, b->1, c->1 (4<5), d->0 (5<7), e->0 (8>7? no: 7<8 -> 1)
    assert owners == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1, "f": 0}
    loads = [sum(c for k, c in costs.items() if owners[k] == r) for r in range(2)]
    assert loads == [9.0, 9.0]
    assert set(assign_owners(costs, 1).values()) == {0}
    # many equal blocks: as even as possible
    equal = assign_owners({i: 1.0 for i in range(10)}, 3)
    assert sorted(list(equal.values()).count(r) for r in range(3)) == [3, 3, 4]
    with pytest.raises(ValueError, match="world_size"):
        assign_owners(costs, 0)


def test_decomposition_cost_counts_cubes_of_dense_factors() -> None:
    assert decomposition_cost([torch.zeros(3, 3), torch.zeros(2, 2)]) == 35.0
    assert decomposition_cost([torch.zeros(4), torch.zeros(2, 2)]) == 12.0


def test_single_rank_group_equals_no_group(tmp_path: Path) -> None:
    """A 1-rank gloo group in this process: the same parameters as no group."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ctx = DistContext(dist.group.WORLD, InverseLayout.SHARED)
        assert (ctx.rank, ctx.world_size) == (0, 1)
        got = {}
        for group in (None, False):
            model = _init(Mixed(), 1)
            opt = _optimizer(model, SCENARIOS["type2_shared_ddp"], process_group=group)
            _run(model, model, opt, _mixed_batches(2, GLOBAL_BATCH, 6))
            got[group] = _flat(model)
        assert _rel(got[None], got[False]) < PARITY_RTOL
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_single_rank_matches_cpu(tmp_path: Path) -> None:
    """The nccl path (one GPU, a 1-rank group): the CUDA trajectory equals the
    CPU one."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        got = {}
        for device in ("cpu", "cuda"):
            model = _init(Mixed(), 1).to(device)
            opt = _optimizer(
                model,
                SCENARIOS["type2_shared_ddp"],
                process_group=None if device == "cuda" else False,
            )
            batches = [
                (x.to(device), y.to(device))
                for x, y in _mixed_batches(2, GLOBAL_BATCH, 6)
            ]
            _run(model, model, opt, batches, pass_loss=True)
            got[device] = _flat(model).cpu()
        assert _rel(got["cuda"], got["cpu"]) < 1e-8
    finally:
        dist.destroy_process_group()
