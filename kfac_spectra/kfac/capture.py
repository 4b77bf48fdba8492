"""Forward hooks that capture layer inputs and output-gradient statistics.

:class:`Capture` registers one forward hook per supported module and a pre-hook and
hook on the root model, each only while it has work to do (the module hooks while
:attr:`Capture.enabled`, the root hooks also while :attr:`Capture.keep_inputs`), so
that a forward pass between factor steps runs the plain model. While
:attr:`Capture.enabled` is true (and autograd is on),
each supported module call leaves a :class:`~kfac_spectra.kfac.blocks.base.Record`;
the root hook then hands the model output to a callback, which typically
back-propagates output probes to the recorded layer outputs with
:meth:`Capture.backprop_probes`. For the empirical Fisher, :meth:`Capture.watch`
instead installs tensor hooks that read the output gradients during the user's own
``loss.backward()``.

With a :attr:`Capture.row_sampler`, the statistics of each root call use a subset of
its examples: the sampler is asked once per call, at the first recorded module, for
the indices to keep among the N examples; every record of the call carries them and
the root callback gets them too. The examples must lie along the batch dimension of
every recorded layer (:meth:`~kfac_spectra.kfac.blocks.base.CurvatureBlock.batch_size`)
and along dim 0 of the model output; a call that breaks this raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .blocks.base import CurvatureBlock, Record

__all__ = ["Capture"]

RootCallback = Callable[[Tensor, int, Tensor | None], None]


def _no_autocast(device: str) -> AbstractContextManager[Any]:
    """Autocast off for ``device`` (a no-op context when it is off already)."""
    if torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return nullcontext()


RowSampler = Callable[[int], Tensor | None]


class Capture:
    """Hooks that record what the K-FAC factors need.

    Args:
        model: The root module; its output (a tensor, last dim = classes/features) is
            what the loss is computed from.
        module_blocks: Map from each hooked module to the block that owns it.
        on_output: Called as ``on_output(output, call_index, rows)`` after each
            captured root forward call; ``rows`` are the example indices the
            statistics use (``None``: all).

    Attributes:
        row_sampler: ``None`` (statistics from every example) or a function that,
            given the batch size N, returns sorted example indices (or ``None`` for
            all of them) for the statistics of one root call.
    """

    def __init__(
        self,
        model: nn.Module,
        module_blocks: dict[nn.Module, CurvatureBlock],
        on_output: RootCallback | None = None,
    ) -> None:
        self.model = model
        self.module_blocks = module_blocks
        self.on_output = on_output
        self._enabled = False
        self._keep_inputs = False
        self._attached = False
        self.suspended = False
        self.records: list[Record] = []
        self.call = 0
        self.last_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.row_sampler: RowSampler | None = None
        self._call_rows: dict[int, tuple[int, Tensor | None]] = {}
        self._handles: list[RemovableHandle] = []
        self._module_handles: list[RemovableHandle] = []
        self._in_root = 0

    # ------------------------------------------------------------------ hooks
    @property
    def enabled(self) -> bool:
        """Whether forward calls are recorded (the hooks exist only while this or
        :attr:`keep_inputs` is true, so a disabled capture costs the forward
        nothing)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self._sync_hooks()

    @property
    def keep_inputs(self) -> bool:
        """Whether the root call's inputs are kept in :attr:`last_inputs` (every
        training-mode forward, recorded or not)."""
        return self._keep_inputs

    @keep_inputs.setter
    def keep_inputs(self, value: bool) -> None:
        self._keep_inputs = bool(value)
        self._sync_hooks()

    def attach(self) -> None:
        """Register the hooks (idempotent), each only while it is needed."""
        self._attached = True
        self._sync_hooks()

    def detach(self) -> None:
        """Remove all hooks."""
        self._attached = False
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        want_root = self._attached and (self._enabled or self._keep_inputs)
        if want_root and not self._handles:
            self._in_root = 0
            self._handles = [
                self.model.register_forward_pre_hook(
                    self._root_pre_hook, with_kwargs=True
                ),
                self.model.register_forward_hook(self._root_hook),
            ]
        elif not want_root and self._handles:
            for h in self._handles:
                h.remove()
            self._handles.clear()
        want = self._enabled and self._attached
        if want and not self._module_handles:
            # prepend: when the root itself is a hooked layer, its record must
            # exist before the root hook hands the output on
            self._module_handles = [
                module.register_forward_hook(self._module_hook, prepend=True)
                for module in self.module_blocks
            ]
        elif not want and self._module_handles:
            for h in self._module_handles:
                h.remove()
            self._module_handles.clear()

    @property
    def recording(self) -> bool:
        """Whether module calls are being recorded right now."""
        return self.enabled and not self.suspended and torch.is_grad_enabled()

    @contextmanager
    def suspend(self) -> Iterator[None]:
        """Temporarily ignore forward calls (internal re-evaluations)."""
        prev = self.suspended
        self.suspended = True
        try:
            yield
        finally:
            self.suspended = prev

    def _root_pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._in_root += 1
        if self._in_root == 1:
            # rows chosen by a forward that raised before its root hook ran
            self._call_rows.pop(self.call, None)
        if self.keep_inputs and not self.suspended and self._in_root == 1:
            self.last_inputs = (args, kwargs)

    def _root_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._in_root -= 1
        if self._in_root != 0 or not self.recording:
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                "K-FAC needs the model to return a tensor (last dim = classes or "
                f"features); got {type(output).__name__}"
            )
        call = self.call
        self.call += 1
        batch, rows = self._call_rows.pop(call, (0, None))
        if (
            self.row_sampler is not None
            and batch
            and (output.ndim == 0 or output.shape[0] != batch)
        ):
            raise ValueError(
                "stats_batch_size: the model output's dim 0 "
                f"({tuple(output.shape)}) is not the batch dimension of its layers "
                f"(N = {batch}); subset statistics need batch-first outputs"
            )
        if self.on_output is not None:
            # statistics in their own dtype (float32 or better), not autocast's
            with _no_autocast(output.device.type):
                self.on_output(output, call, rows)

    def _module_hook(
        self, module: nn.Module, args: tuple[Any, ...], output: Any
    ) -> Any:
        if not self.recording:
            return None
        block = self.module_blocks[module]
        rows = self._rows_for(block, module, args)
        device = output.device.type if isinstance(output, Tensor) else "cpu"
        with _no_autocast(device):
            record, replacement = block.forward_record(
                module, args, output, self.call, rows
            )
        if record is not None:
            self.records.append(record)
        return replacement

    def _rows_for(
        self, block: CurvatureBlock, module: nn.Module, args: tuple[Any, ...]
    ) -> Tensor | None:
        """The example subset of the current root call (chosen at its first layer)."""
        if self.row_sampler is None or not args or not isinstance(args[0], Tensor):
            return None
        batch = block.batch_size(module, args)
        known = self._call_rows.get(self.call)
        if known is None:
            known = (batch, self.row_sampler(batch))
            self._call_rows[self.call] = known
        elif known[0] != batch:
            raise ValueError(
                f"stats_batch_size: layer {block.name!r} sees {batch} examples but "
                f"an earlier layer of the same forward saw {known[0]}; subset "
                "statistics need the examples along every layer's batch dimension"
            )
        return known[1]

    # ------------------------------------------------------------- gradients
    def take_records(self, call: int | None = None) -> list[Record]:
        """Remove and return the records (of one root call, or all)."""
        if call is None:
            taken, self.records = self.records, []
            return taken
        taken = [r for r in self.records if r.call == call]
        self.records = [r for r in self.records if r.call != call]
        return taken

    @staticmethod
    def backprop_probes(
        output: Tensor, records: list[Record], probes: list[Tensor]
    ) -> None:
        """Back-propagate each probe to the recorded layer outputs.

        Fills ``record.grads`` (one entry per probe) and keeps the graph alive for
        the user's own backward pass.

        Args:
            output: The root output the probes are shaped like.
            records: Records whose ``outputs`` are in ``output``'s graph.
            probes: Output-space vectors (see
                :func:`~kfac_spectra.kfac.fisher.output_probes`).
        """
        targets = [t for r in records for t in r.outputs]
        if not targets or not output.requires_grad:
            return
        for r in records:
            r.grads = []
        for v in probes:
            grads = torch.autograd.grad(
                output, targets, grad_outputs=v, retain_graph=True, allow_unused=True
            )
            i = 0
            for r in records:
                n = len(r.outputs)
                r.grads.append(list(grads[i : i + n]))
                i += n

    @staticmethod
    def watch(records: list[Record]) -> None:
        """Install tensor hooks that store the user's backward gradients."""
        for r in records:
            r.grads = [[None] * len(r.outputs)]
            for i, t in enumerate(r.outputs):

                def hook(grad: Tensor, r: Record = r, i: int = i) -> None:
                    prev = r.grads[0][i]
                    r.grads[0][i] = grad.detach() if prev is None else prev + grad

                t.register_hook(hook)
