"""ConvACModule: a ConvAC trained with Lightning, built from plain hyperparameters.

The module holds only plain Python hyperparameters (a registry model name, its constructor
kwargs and optimizer settings), so ``ConvACModule.load_from_checkpoint(path,
weights_only=True)`` rebuilds it without unpickling code.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from convac.zoo import create_model

OBJECTIVES = ("generative", "discriminative", "hybrid")


class ConvACModule(L.LightningModule):
    """Trains ``create_model(model_name, **model_kwargs)`` (its network is :attr:`model`).

    Objectives, per example, in nats (``x`` a batch ``(B, C, H, W)``, ``y`` labels ``(B,)``):

    * ``generative``: ``-log P(x)`` for a density model (``num_classes == 1``), the joint
      ``-log P(x, y)`` for a class-conditional model;
    * ``discriminative``: the cross-entropy ``-log P(y | x)`` of :meth:`ConvAC.log_posterior`;
    * ``hybrid``: ``(1 - hybrid_alpha) * (-log P(y | x)) + hybrid_alpha * (-log P(x, y))``.

    Logged: ``train/loss`` (every step), ``train/nll``, ``val/loss``, ``val/nll``, ``val/bpd``
    (``nll / (D ln 2)``, ``D = C * H * W``), ``val/acc`` for classifiers, and the same under
    ``test/``; with ``test_missing_fraction > 0`` the test also logs ``test/acc_missing``, the
    accuracy when that fraction of the variables (seeded per batch) is marginalized.

    Args:
        model_name: a name of :func:`convac.list_models` (``"ht"``, ``"cp"``, ...).
        model_kwargs: that model's constructor arguments (plain types only).
        objective: one of ``generative``, ``discriminative``, ``hybrid``.
        hybrid_alpha: the generative weight of the ``hybrid`` objective, in ``[0, 1]``.
        optimizer: a class name of ``torch.optim`` (``Adam``, ``AdamW``, ``SGD``, ...).
        lr: learning rate.
        weight_decay: the optimizer's weight decay.
        test_missing_fraction: share of variables marginalized for ``test/acc_missing``.
    """

    def __init__(
        self,
        model_name: str = "ht",
        model_kwargs: dict[str, Any] | None = None,
        objective: str = "generative",
        hybrid_alpha: float = 0.1,
        optimizer: str = "Adam",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        test_missing_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0.0 <= hybrid_alpha <= 1.0:
            raise ValueError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
        if not isinstance(getattr(torch.optim, optimizer, None), type):
            raise ValueError(f"optimizer must name a torch.optim class (Adam, SGD, ...), got {optimizer!r}")
        if not 0.0 <= test_missing_fraction < 1.0:
            raise ValueError(f"test_missing_fraction must be in [0, 1), got {test_missing_fraction}")
        self.model = create_model(model_name, **(model_kwargs or {}))
        if objective != "generative" and self.model.num_classes < 2:
            raise ValueError(
                f"the {objective} objective needs a classifier (num_classes >= 2), "
                f"got num_classes={self.model.num_classes}"
            )
        self.bits_per_nat = 1.0 / (self.model.num_variables * math.log(2))

    def forward(self, x: Tensor, missing: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B,): ``log P(x)``."""
        return self.model.log_prob(x, missing)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Compute the objective of ``batch = (x (B, C, H, W), y (B,))`` and log its metrics."""
        x, y = batch
        log_joint = self.model.log_joint(x)  # (B, K): log P(x, y)
        log_px = torch.logsumexp(log_joint, dim=1)  # (B,)
        nll = -log_px.mean()
        metrics = {"nll": nll}
        if self.model.num_classes > 1:
            log_post = log_joint - log_px[:, None]  # (B, K): log P(y | x)
            ce = F.nll_loss(log_post, y)
            joint_nll = -log_joint.gather(1, y[:, None]).mean()
            metrics["acc"] = (log_post.argmax(1) == y).float().mean()
            loss = {
                "generative": joint_nll,
                "discriminative": ce,
                "hybrid": (1 - self.hparams.hybrid_alpha) * ce + self.hparams.hybrid_alpha * joint_nll,
            }[self.hparams.objective]
        else:
            loss = nll
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        else:
            metrics["loss"] = loss
            metrics["bpd"] = nll * self.bits_per_nat
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(x), sync_dist=True,
        )  # epoch means over every process's batches (reduced once, at the epoch's end)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
        fraction = self.hparams.test_missing_fraction
        if fraction > 0 and self.model.num_classes > 1:
            x, y = batch
            generator = torch.Generator(device=x.device).manual_seed(batch_idx)
            missing = torch.rand(x.shape, generator=generator, device=x.device) < fraction
            acc = (self.model.log_posterior(x, missing).argmax(1) == y).float().mean()
            self.log("test/acc_missing", acc, batch_size=len(x), sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Lightning's hook before the weights are loaded: :meth:`check_checkpoint`."""
        self.check_checkpoint(checkpoint)

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Raise a ValueError if ``checkpoint`` holds another architecture than this module,
        naming the model settings that differ, e.g. ``model.channels: checkpoint 32, this run 16``
        (settings stored on one side only are left to the strict ``load_state_dict``)."""
        saved = checkpoint.get("hyper_parameters", {})
        ours = {"name": self.hparams.model_name, **(self.hparams.model_kwargs or {})}
        theirs = {"name": saved.get("model_name"), **(saved.get("model_kwargs") or {})}
        diff = [f"model.{k}: checkpoint {theirs[k]!r}, this run {ours[k]!r}"
                for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
        if diff:
            raise ValueError("the checkpoint holds another architecture than this run builds: " + "; ".join(diff))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = getattr(torch.optim, self.hparams.optimizer)
        return optimizer(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
