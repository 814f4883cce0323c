"""The shared base of the convac DataModules: fixed seeded splits held in memory.

A dataset is three splits of ``(x, y)``: ``x`` of shape ``(N, C, H, W)`` holding integer
values in ``[0, num_values)`` (a 1-D sequence of ``N`` variables is ``(N, 1, 1, D)``) and
``y`` of shape ``(N,)`` holding class labels in ``[0, num_classes)`` (all 0 when unlabelled).
Subclasses only read their files (:meth:`ConvACDataModule.load_splits`); this base checks the
arrays against the declared layout, optionally rescales them to floats, and serves them.
"""
from __future__ import annotations

from typing import ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

Split = tuple[Tensor, Tensor]
SPLITS = ("train", "val", "test")


def hold_out(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``(x, y)`` into ``(kept, held_out)`` by a permutation seeded with ``seed``.

    ``x``: ``(N, ...)``, ``y``: ``(N,)``; the held-out part has ``round(fraction * N)`` rows.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_out = round(fraction * len(x))
    kept, out = perm[n_out:], perm[:n_out]
    return (x[kept], y[kept]), (x[out], y[out])


def area_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer images ``(N, C, H, W)`` -> ``(N, C, h, w)``: every output pixel is the mean of the input
    pixels its area covers (``adaptive_avg_pool2d``: block means when ``h`` divides ``H``; larger
    outputs repeat pixels), rounded to the nearest integer, so the values stay in their range."""
    return F.adaptive_avg_pool2d(x.float(), size).round().long()


class ConvACDataModule(L.LightningDataModule):
    """Base DataModule: in-memory ``train`` / ``val`` / ``test`` splits of ``(x, y)``.

    Args:
        in_shape: the declared ``(C, H, W)`` of one sample; checked against the files.
        num_values: values per variable (``x`` holds integers in ``[0, num_values)``).
        num_classes: number of labels (1 for unlabelled density-estimation data).
        batch_size: samples per batch for every split.
        num_workers: DataLoader worker processes.
        seed: seed of the random splits (independent of the run's seed, so that every run
            sees the same split).
        val_fraction: share of the training data held out for validation, where the
            dataset has no validation split of its own.
        continuous: if True, ``x`` is served as float ``x / (num_values - 1)`` in ``[0, 1]``
            (for Gaussian leaves) and :attr:`bin_width` is ``1 / (num_values - 1)``;
            otherwise ``x`` stays a long tensor and :attr:`bin_width` is None.
        resize: if True, samples whose ``(H, W)`` differ from ``in_shape``'s are resized to it
            (:func:`area_resize`), e.g. digits at 4x4 or MNIST at 16x16 for a depth sweep.
    """

    name: ClassVar[str]

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...],
        num_values: int,
        num_classes: int,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        continuous: bool = False,
        resize: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["name"] = self.name  # lets `convac-eval` rebuild the data from a checkpoint
        if len(in_shape) != 3:
            raise ValueError(f"data.in_shape must be (C, H, W), got {list(in_shape)}")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.num_values = int(num_values)
        self.num_classes = int(num_classes)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.continuous = continuous
        self.resize = resize
        self._data: dict[str, Split] | None = None

    @property
    def bin_width(self) -> float | None:
        """Width of one quantization bin of the served ``x`` (continuous data only, else None)."""
        return 1.0 / (self.num_values - 1) if self.continuous else None

    def load_splits(self) -> dict[str, Split]:
        """Read the dataset: ``{"train", "val", "test"}`` -> ``(x (N, C, H, W), y (N,))``.

        ``x`` holds integers in ``[0, num_values)``, ``y`` integers in ``[0, num_classes)``.
        """
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load, check and convert the splits once (every stage shares them)."""
        if self._data is None:
            self._data = {k: self._prepare(k, *v) for k, v in self.load_splits().items()}

    def split(self, name: str) -> Split:
        """The served ``(x, y)`` of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        self.setup()
        return self._data[name]

    def check_fits(self, model: nn.Module, label: str = "the model") -> None:
        """Raise a ValueError saying what ``model`` (a ConvAC, named ``label`` in the message)
        expects and what this data serves, if it cannot take this data: another sample shape,
        fewer classes than the labels, discrete leaves for continuous data (or the reverse), or
        fewer categorical values than the data holds."""
        served = f"data={self.name} serves"
        problems = []
        if tuple(model.in_shape) != self.in_shape:
            problems.append(f"{label} takes samples of shape {list(model.in_shape)} but {served} {list(self.in_shape)}")
        if 1 < model.num_classes < self.num_classes:
            problems.append(f"{label} has {model.num_classes} classes but {served} labels in [0, {self.num_classes})")
        if model.leaf_spec.is_discrete == self.continuous:
            kinds = ("continuous values (data.continuous=true)", "integer values (data.continuous=false)")
            problems.append(f"{label} has {model.leaf_spec} leaves but {served} {kinds[not self.continuous]}")
        elif self.num_values > getattr(model.leaf_spec, "num_values", self.num_values):
            problems.append(f"{label} has {model.leaf_spec} leaves but {served} {self.num_values} values")
        if problems:
            raise ValueError("; ".join(problems))

    def _prepare(self, split: str, x: Tensor, y: Tensor) -> Split:
        """Check one split against the declared layout and convert it to the served dtype."""
        where = f"the {self.name} {split} split"
        if self.resize and x.shape[1] == self.in_shape[0]:
            x = area_resize(x, self.in_shape[1:])
        if tuple(x.shape[1:]) != self.in_shape:
            hint = " (or data.resize=true to resize the samples to in_shape)" if x.shape[1] == self.in_shape[0] else ""
            raise ValueError(
                f"data.in_shape is {list(self.in_shape)} but {where} has samples of shape "
                f"{list(x.shape[1:])}; set data.in_shape={list(x.shape[1:])}{hint}"
            )
        if len(x) and (x.min() < 0 or x.max() >= self.num_values):
            raise ValueError(
                f"data.num_values is {self.num_values} but {where} holds values in "
                f"[{int(x.min())}, {int(x.max())}]"
            )
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"data.num_classes is {self.num_classes} but {where} has labels in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        x = x.float() / (self.num_values - 1) if self.continuous else x.long()
        return x, y.long()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            TensorDataset(*self.split(split)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
