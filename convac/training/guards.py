"""FiniteGuard: stop a run at its first non-finite loss or gradient, saying where, with a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient (the message says where)."""


def first_nonfinite_output(model: nn.Module, x: Tensor) -> str | None:
    """Run ``model(x)`` without gradients and return ``"name (Type)"`` of the first submodule, in
    call order, whose floating-point output holds a NaN or an infinity (None if there is none).

    For a ConvAC the call order is the data path: ``leaves`` (the leaf layer is called as a
    module), then ``sums.0``, ``pools.0``, ... and ``root``, so the answer is the module where
    the non-finite value first appears."""
    found: list[str] = []

    def hook(name: str):
        def check(module: nn.Module, args: Any, output: Any) -> None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            if not found and any(torch.is_tensor(o) and o.is_floating_point() and not o.isfinite().all() for o in outputs):
                found.append(f"{name} ({type(module).__name__})")
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


class FiniteGuard(L.Callback):
    """Check the loss and every gradient before each optimizer step; at the first NaN or infinity,
    save a checkpoint (the state before the bad update, which is never applied) and raise
    :class:`NonFiniteError` naming the epoch, batch index and global step, and the layer:

    * a non-finite gradient: the first parameter (module order) whose gradient is not finite;
    * a non-finite loss: the first parameter holding non-finite values, else the first submodule
      of ``pl_module.model`` along the data path (leaves included) whose output is not finite on
      that batch (:func:`first_nonfinite_output`: one extra forward pass of the batch's inputs
      ``batch[0]``, only once it has failed).

    Under loss scaling (``trainer.precision=16-mixed``: the precision plugin holds a
    ``GradScaler``) the gradients are not checked: a non-finite gradient there is the scaler's
    business, which skips that update and lowers the scale. The loss (as scaled for the
    backward pass) still is. A gradient that stays non-finite (a bug, not an overflow) is then
    not stopped here: it shows as a loss scale that halves at every step (``GradScaler.get_scale``).

    Cost: one host synchronization per optimizer step. Under DDP the ranks decide together
    (gradients are already all-reduced; the loss flags are OR-reduced), so all of them stop.

    Args:
        dirpath: folder of the checkpoint ``nonfinite-epoch{E}-step{S}.ckpt`` (default: the
            trainer's checkpoint callback's folder, else ``default_root_dir``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._batch: Any = None
        self._batch_idx = -1
        self._loss_ok: Tensor | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        ok = loss.detach().isfinite().all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok  # accumulated batches

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        loss_scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        named_grads = [] if loss_scaled else [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        loss_ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        self._loss_ok = None
        flags = torch.stack([loss_ok.to(pl_module.device)] + [g.isfinite().all() for _, g in named_grads])
        local_bad = not bool(flags.all())
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            return
        where = (f"epoch {trainer.current_epoch}, batch {self._batch_idx} "
                 f"(global step {trainer.global_step})")
        if not local_bad:
            what = f"a non-finite loss or gradient on another process at {where}"
        elif not flags[0]:
            what = f"non-finite loss at {where}: {self._loss_culprit(pl_module)}"
        else:
            bad = [n for (n, _), ok in zip(named_grads, flags[1:].tolist()) if not ok]
            more = f" (and {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
            what = f"non-finite gradient at {where}: layer {bad[0]}{more}"
        path = self._checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        raise NonFiniteError(f"{what}; checkpoint before this update saved to {path}")

    def _loss_culprit(self, pl_module: L.LightningModule) -> str:
        """Which layer made the loss non-finite (see the class docstring)."""
        for name, p in pl_module.named_parameters():
            if not p.detach().isfinite().all():
                return f"parameter {name} holds non-finite values"
        layer = first_nonfinite_output(pl_module.model, self._batch[0])
        if layer is None:
            return "every layer's output is finite on this batch (the objective itself overflowed)"
        return f"first non-finite output in layer model.{layer}"

    def _checkpoint_path(self, trainer: L.Trainer) -> Path:
        checkpoint = trainer.checkpoint_callback
        folder = self.dirpath or (checkpoint and checkpoint.dirpath) or trainer.default_root_dir
        return Path(folder) / f"nonfinite-epoch{trainer.current_epoch:03d}-step{trainer.global_step}.ckpt"
