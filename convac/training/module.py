"""ConvACModule: a ConvAC trained with Lightning, built from plain hyperparameters.

The module holds only plain Python hyperparameters (a registry model name, its constructor
kwargs and optimizer settings), so ``ConvACModule.load_from_checkpoint(path,
weights_only=True)`` rebuilds it without unpickling code.
"""
from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F

from convac.errors import InvalidValueError
from convac.model import marginalize_classes
from convac.structure import check_trees, learn_structure
from convac.training.em import EM, check_settings as check_em_settings
from convac.training.ensemble import ensemble_log_joint
from convac.validation import check_members
from convac.zoo import create_model

OBJECTIVES = ("generative", "discriminative", "hybrid")
EM_DEFAULTS = {"pseudocount": 0.1, "full_batch": False}
# The learning rate when ``lr`` is None: gradient optimizers 0.01 (Adam's on these models); EM
# its step size 0.1, the online-EM step of the digits and MNIST recipes (a gradient optimizer's
# 0.01 would move EM's running counts a hundredth of the way per step).
DEFAULT_LR = 0.01
DEFAULT_EM_STEP = 0.1
FUSED_OPTIMIZERS = ("Adam", "AdamW", "SGD")  # torch.optim classes with a fused CPU and CUDA kernel


def check_precision(precision: str, use_em: bool) -> None:
    """Raise an :class:`InvalidValueError` (one line naming a precision that works) unless the
    Lightning precision ``precision`` (``trainer.precision``: ``"32-true"``, ``"bf16-mixed"``, ...)
    trains a ConvAC; ``use_em``: the module trains by EM.

    * ``*-true`` half precisions store the parameters in bfloat16/float16: the leaves' log-
      probabilities and every sum node would be rounded to 8 (11) bits of mantissa.
    * ``16-mixed`` with EM: the loss scaling of float16 scales the gradients EM reads its counts
      from, but not its flows.
    ``32``, ``64`` and ``bf16-mixed`` train (``16-mixed`` too with a gradient optimizer): under
    mixed precision the sum nodes compute in float32 (:func:`convac.layers.float32_under_autocast`).
    """
    precision = str(precision)
    if precision in ("bf16-true", "16-true", "bf16", "16", "half"):
        raise InvalidValueError(f"trainer.precision={precision} stores the parameters in half precision, too coarse for "
                                f"the log-space sums of a ConvAC; use trainer.precision=bf16-mixed (or 32)")
    if use_em and precision == "16-mixed":
        raise InvalidValueError("trainer.precision=16-mixed scales the loss, and so the gradients EM reads its counts from; "
                                "with module.optimizer=em use trainer.precision=bf16-mixed (or 32)")


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

    A model with ``structure="learned"`` learns its structure from the datamodule's training
    split when fitting starts (:func:`convac.structure.learn_structure`; a resumed run then loads
    the stored one from its checkpoint); the seconds it took are logged as ``structure/seconds``.

    Args:
        model_name: a name of :func:`convac.list_models` (``"ht"``, ``"cp"``, ...).
        model_kwargs: that model's constructor arguments (plain types only).
        objective: one of ``generative``, ``discriminative``, ``hybrid``.
        hybrid_alpha: the generative weight of the ``hybrid`` objective, in ``[0, 1]``.
        optimizer: a class name of ``torch.optim`` (``Adam``, ``AdamW``, ``SGD``, ...; those three
            with ``fused=True``, their one-kernel implementation), or ``"em"``:
            expectation-maximization (:class:`convac.training.em.EM`, generative objective only),
            whose step size is ``lr``.
        lr: learning rate (EM: the step size in ``(0, 1]``); None: :data:`DEFAULT_LR` for a
            gradient optimizer, :data:`DEFAULT_EM_STEP` for EM (:attr:`lr`).
        weight_decay: the optimizer's weight decay (not for EM).
        test_missing_fraction: share of variables marginalized for ``test/acc_missing``.
        em: EM settings: ``pseudocount`` (added to every expected count) and ``full_batch``
            (one M-step per epoch from the statistics of all its batches; mini-batch EM
            otherwise, one step per batch).
        scheduler: a class name of ``torch.optim.lr_scheduler`` (``CosineAnnealingLR``,
            ``ReduceLROnPlateau``, ...) stepped once per epoch, or None; ``ReduceLROnPlateau``
            watches ``val/loss``.
        scheduler_kwargs: its arguments; ``CosineAnnealingLR`` takes ``T_max`` from the
            trainer's ``max_epochs`` when not given.
        structure_learning: :func:`convac.structure.learn_structure` arguments (``seed``,
            ``bins``, ``max_rows``, ``noise``, ``normalized``, ``trees``; an unknown tree kind
            raises a ValueError here, before anything is fitted).
        ensemble_members: ``G``: fit the model's repetitions as ``G`` ensemble members, groups of
            ``R / G`` consecutive repetitions each fitted to all of the data on its own (generative
            objective only; :mod:`convac.training.ensemble`); the loss is then the members' mean
            NLL and ``nll`` the ensemble's. 1 (the default): one mixture, fitted jointly.
        data_softening: the flip probability ``1 - beta`` of data softening while training (Liu &
            Van den Broeck, NeurIPS 2021; categorical and Bernoulli leaves): every observed
            value of a training batch is soft evidence, kept with probability ``1 - flip``
            (:meth:`LeafLayer.softened`), so the training loss (and EM's counts) are those
            of the softened data; validation and test use the data as it is. 0: off.
        init_std: when set, the new model's logits are drawn again from ``N(0, init_std^2)``
            (:meth:`ConvAC.reset_logits`; the model's own draw has std 1).
        compile: compile the model with ``torch.compile`` (``model.compile()``: its forward, which
            every query calls; the first batches then take 10-70 s to compile). On CPU it speeds
            up a 28x28 HT's training step and slows the digits model's (measured by
            ``python scripts/bench.py --only compile``); not with EM.
    """

    def __init__(
        self,
        model_name: str = "ht",
        model_kwargs: dict[str, Any] | None = None,
        objective: str = "generative",
        hybrid_alpha: float = 0.1,
        optimizer: str = "Adam",
        lr: float | None = None,
        weight_decay: float = 0.0,
        test_missing_fraction: float = 0.0,
        em: dict[str, Any] | None = None,
        scheduler: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        structure_learning: dict[str, Any] | None = None,
        ensemble_members: int = 1,
        data_softening: float = 0.0,
        init_std: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if objective not in OBJECTIVES:
            raise InvalidValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0.0 <= hybrid_alpha <= 1.0:
            raise InvalidValueError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
        self.use_em = optimizer.lower() == "em"
        if not self.use_em and not isinstance(getattr(torch.optim, optimizer, None), type):
            raise InvalidValueError(f"optimizer must name a torch.optim class (Adam, SGD, ...) or be 'em', got {optimizer!r}")
        if scheduler is not None and not isinstance(getattr(torch.optim.lr_scheduler, scheduler, None), type):
            raise InvalidValueError(f"scheduler must name a torch.optim.lr_scheduler class (CosineAnnealingLR, ...), got {scheduler!r}")
        if not 0.0 <= test_missing_fraction < 1.0:
            raise InvalidValueError(f"test_missing_fraction must be in [0, 1), got {test_missing_fraction}")
        unknown = set(em or {}) - set(EM_DEFAULTS)
        if unknown:
            raise InvalidValueError(f"unknown EM settings {sorted(unknown)}; expected {sorted(EM_DEFAULTS)}")
        self.em_settings = {**EM_DEFAULTS, **(em or {})}
        if "trees" in (structure_learning or {}):  # an unknown tree kind fails now, not when fitting starts
            check_trees(structure_learning["trees"])
        if self.use_em:
            if objective != "generative":
                raise InvalidValueError(f"optimizer=em maximizes a likelihood: it needs objective=generative, got {objective!r}")
            check_em_settings(self.lr, self.em_settings["pseudocount"])
            self.automatic_optimization = False  # EM's statistics and M-step: see training_step
        self.model = create_model(model_name, **(model_kwargs or {}))
        check_members(ensemble_members, getattr(self.model, "num_repetitions", 1))
        if ensemble_members > 1 and objective != "generative":
            raise InvalidValueError(f"ensemble_members > 1 fits each member's likelihood: it needs objective=generative, "
                             f"got {objective!r}")
        self.model.leaves.check_softening(data_softening)
        if init_std is not None:
            self.model.reset_logits(init_std)
        if objective != "generative" and self.model.num_classes < 2:
            raise InvalidValueError(
                f"the {objective} objective needs a classifier (num_classes >= 2), "
                f"got num_classes={self.model.num_classes}"
            )
        if compile:
            if self.use_em:
                raise InvalidValueError("module.compile=true does not work with optimizer=em (EM reads the layers' outputs "
                                 "through forward hooks); use one of them")
            self.model.compile()  # torch.compile of the model's forward, in place (the state dict keeps its keys)
        self.bits_per_nat = 1.0 / (self.model.num_variables * math.log(2))
        self.structure_seconds: float | None = None
        self.data_checked = False  # True once a convac datamodule has checked its values for the model

    @property
    def lr(self) -> float:
        """The learning rate (EM: the step size) this module trains with: ``lr``, or when None
        :data:`DEFAULT_EM_STEP` for EM and :data:`DEFAULT_LR` for a gradient optimizer."""
        if self.hparams.lr is not None:
            return self.hparams.lr
        return DEFAULT_EM_STEP if self.use_em else DEFAULT_LR

    def forward(self, x: Tensor, missing: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B,): ``log P(x)``."""
        return self.model.log_prob(x, missing)

    def setup(self, stage: str) -> None:
        """Check a convac datamodule against the model once (every value of its splits was
        checked when it was set up; :meth:`ConvACDataModule.check_fits` compares its layout with
        the model's), after which the batches skip the model's per-batch value checks
        (:attr:`ConvAC.validate_args`: host reads); learn the model's structure from the training
        split when fitting a ``learned`` one."""
        if self._trainer is not None:
            check_precision(self.trainer.precision, self.use_em)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "check_fits"):
            datamodule.check_fits(self.model)
            self.data_checked = True
        if stage != "fit" or getattr(self.model, "structure", "grid") != "learned":
            return
        if datamodule is None or not hasattr(datamodule, "split"):
            rank_zero_warn("structure='learned' but no convac datamodule to learn it from: the model keeps its "
                           "order (call convac.structure.learn_structure(model, x) before fitting)")
            return
        start = time.perf_counter()
        learn_structure(self.model, datamodule.split("train")[0], members=self.hparams.ensemble_members,
                        **(self.hparams.structure_learning or {}))
        self.structure_seconds = time.perf_counter() - start

    def on_train_start(self) -> None:
        if self.structure_seconds is not None:
            self.log("structure/seconds", self.structure_seconds, on_step=False, on_epoch=True, sync_dist=True)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """Compute the objective of ``batch = (x (B, C, H, W), y (B,))`` and log its metrics."""
        x, y = batch
        members = self.hparams.ensemble_members
        softening = self.hparams.data_softening if stage == "train" else 0.0
        with self.model.validation(not self.data_checked), self.model.leaves.softened(softening):
            if members == 1:
                log_joint = fitted = self.model.log_joint(x)  # (B, K): log P(x, y)
            else:  # the ensemble's log P(x, y) and the members' mean (the objective)
                log_joint, fitted = ensemble_log_joint(self.model, x, members)
        log_px = marginalize_classes(log_joint)  # (B,)
        nll = -log_px.mean()
        metrics = {"nll": nll}
        if self.model.num_classes > 1:
            log_post = log_joint - log_px[:, None]  # (B, K): log P(y | x)
            ce = F.nll_loss(log_post, y)
            joint_nll = -fitted.gather(1, y[:, None]).mean()
            metrics["acc"] = (log_post.argmax(1) == y).float().mean()
            loss = {
                "generative": joint_nll,
                "discriminative": ce,
                "hybrid": (1 - self.hparams.hybrid_alpha) * ce + self.hparams.hybrid_alpha * joint_nll,
            }[self.hparams.objective]
        else:
            loss = -fitted[:, 0].mean()
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
        loss = self._step(batch, "train")
        if self.use_em:
            self._em_statistics(loss * len(batch[0]), batch_idx)
        return loss

    def _em_statistics(self, total_nll: Tensor, batch_idx: int) -> None:
        """EM (manual optimization): add the batch's counts (the gradient of the summed NLL and
        the flows), then take the M-step after this batch (mini-batch EM) or after the epoch's
        last batch (full-batch EM). Under DDP the counts are summed over the processes."""
        optimizer = self.optimizers()
        self.manual_backward(total_nll)
        optimizer.optimizer.accumulate()
        if self.em_settings["full_batch"] and batch_idx + 1 < self.trainer.num_training_batches:
            return
        world = self.trainer.world_size
        reduce = (lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if world > 1 else None
        optimizer.step(all_reduce=reduce, world_size=world)
        optimizer.zero_grad()

    def _training_set_size(self) -> int | None:
        """The number of training examples (for EM's count scale), read from the datamodule."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "split"):
            return len(datamodule.split("train")[0])
        rank_zero_warn("optimizer=em without a convac datamodule: the EM counts are not scaled to the training set "
                       "size, so em.pseudocount weighs against one batch's counts")
        return None

    def teardown(self, stage: str) -> None:
        """When fitting ends (also by an exception): remove EM's forward hooks from the model
        (:meth:`EM.remove_hooks`), so that later forward passes keep no outputs or graphs and a
        later ``fit`` starts from a model without hooks."""
        if stage == "fit" and self._trainer is not None:
            for optimizer in self.trainer.optimizers:
                if isinstance(optimizer, EM):
                    optimizer.remove_hooks()

    def on_train_epoch_end(self) -> None:
        """Step the learning-rate (or EM step-size) schedule under manual optimization."""
        scheduler = self.lr_schedulers() if not self.automatic_optimization else None
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(self.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
        fraction = self.hparams.test_missing_fraction
        if fraction > 0 and self.model.num_classes > 1:
            x, y = batch
            generator = torch.Generator(device=x.device).manual_seed(batch_idx)
            missing = torch.rand(x.shape, generator=generator, device=x.device) < fraction
            with self.model.validation(not self.data_checked):
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
            raise InvalidValueError("the checkpoint holds another architecture than this run builds: " + "; ".join(diff))

    def configure_optimizers(self) -> Any:
        """The optimizer (or EM) and, when ``scheduler`` is set, its per-epoch schedule."""
        hp = self.hparams
        if self.use_em:
            size = self._training_set_size()
            # an ensemble's objective is the members' mean: each member's counts arrive divided by
            # G, and counting the training set G times gives every member its own counts back
            size = None if size is None else size * hp.ensemble_members
            optimizer = EM(self.model, lr=self.lr, pseudocount=self.em_settings["pseudocount"], dataset_size=size)
        else:
            kwargs = {"lr": self.lr, "weight_decay": hp.weight_decay}
            if hp.optimizer in FUSED_OPTIMIZERS and all(p.device.type in ("cpu", "cuda") for p in self.parameters()):
                kwargs["fused"] = True  # one kernel per parameter instead of about ten: same update, same state
            optimizer = getattr(torch.optim, hp.optimizer)(self.parameters(), **kwargs)
        if hp.scheduler is None:
            return optimizer
        kwargs = dict(hp.scheduler_kwargs or {})
        if hp.scheduler == "CosineAnnealingLR" and "T_max" not in kwargs:
            kwargs["T_max"] = max(1, self.trainer.max_epochs or 1)
        scheduler = getattr(torch.optim.lr_scheduler, hp.scheduler)(optimizer, **kwargs)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss"}}
