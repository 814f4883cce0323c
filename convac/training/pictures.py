"""Pictures: a Lightning callback drawing what an image model does at the end of training."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from convac.data.base import SPLITS
from convac.errors import InvalidValueError
from convac.pictures import pick_images, write_pictures


class Pictures(L.Callback):
    """At the end of fitting, write ``samples.png`` (a grid of samples; one row per class for
    classifiers) and ``inpaint.png`` (originals, masked inputs, completions by sampling and by
    MPE, for three masks) of ``pl_module.model`` into the run folder (:mod:`convac.pictures`).

    The originals are images of the datamodule's ``split`` (the first of each class, then the
    next ones); without a convac datamodule, samples of the model. A model of sequences
    (``in_shape`` ``(1, 1, D)``) has no pictures: the callback says so and writes nothing. Only
    global rank 0 draws.

    Args:
        dirpath: the run folder (default: the trainer's ``default_root_dir``).
        split: the data split the originals come from (``"train"``, ``"val"`` or ``"test"``).
        seed: seed of the samples and of the i.i.d. mask.
    """

    def __init__(self, dirpath: str | None = None, split: str = "test", seed: int = 0) -> None:
        if split not in SPLITS:
            raise InvalidValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.dirpath = dirpath
        self.split = split
        self.seed = seed

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        if model.in_shape[1] == 1:
            rank_zero_info(f"Pictures: no samples.png / inpaint.png: the model takes sequences of shape "
                           f"{list(model.in_shape)}, not images")
            return
        datamodule = trainer.datamodule
        x = pick_images(*datamodule.split(self.split)) if hasattr(datamodule, "split") else None
        name = f"{pl_module.hparams.get('model_name', 'the model')} after {trainer.current_epoch} epochs"
        write_pictures(model, Path(self.dirpath or trainer.default_root_dir), x, name=name, seed=self.seed,
                       source=f"{self.split} images")
