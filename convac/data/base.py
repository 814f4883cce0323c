"""The shared base of the convac DataModules: fixed seeded splits held in memory.

A dataset is three splits of ``(x, y)``: ``x`` of shape ``(N, C, H, W)`` (a 1-D sequence of
``D`` variables is ``(N, 1, 1, D)``) and ``y`` of shape ``(N,)`` holding class labels in
``[0, num_classes)`` (all 0 when unlabelled). Subclasses only read their files
(:meth:`ConvACDataModule.load_splits`); this base reads the layout from the arrays (the
sample shape ``in_shape``, the number of values, the number of classes) or checks the
declared one against them, and serves every split in one dtype:

* integer data (codes ``0 .. num_values - 1``, for categorical / Bernoulli leaves): a long
  tensor; a float32 tensor holding NaN for the missing entries when the data has any
  (:class:`convac.model.ConvAC` marginalizes NaN entries); with ``continuous=True`` the float
  ``x / (num_values - 1)`` in ``[0, 1]`` (Gaussian leaves);
* real-valued data (``continuous=True`` only, Gaussian leaves): float32 as read, NaN missing.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from convac.errors import InvalidValueError

Split = tuple[Tensor, Tensor]
SPLITS = ("train", "val", "test")


def hold_out(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``(x, y)`` into ``(kept, held_out)`` by a permutation seeded with ``seed``.

    ``x``: ``(N, ...)``, ``y``: ``(N,)``; the held-out part has ``round(fraction * N)`` rows.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_out = round(fraction * len(x))
    kept, out = perm[n_out:], perm[:n_out]
    return (x[kept], y[kept]), (x[out], y[out])


class EpochRandomSampler(RandomSampler):
    """A random order of the training examples that depends only on ``seed`` and the epoch
    (Lightning calls :meth:`set_epoch` before every epoch): a run resumed from a checkpoint sees
    the batches of the run it continues. Under DDP Lightning replaces it (a ``RandomSampler``)
    by its ``DistributedSampler``, seeded by the run's seed and the epoch as well."""

    def __init__(self, data_source, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)


def area_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer images ``(N, C, H, W)`` -> ``(N, C, h, w)``: every output pixel is the mean of the input
    pixels its area covers (``adaptive_avg_pool2d``: block means when ``h`` divides ``H``; larger
    outputs repeat pixels), rounded to the nearest integer, so the values stay in their range."""
    return F.adaptive_avg_pool2d(x.float(), size).round().long()


def fill_splits(given: dict[str, Split], test_fraction: float, val_fraction: float, seed: int) -> dict[str, Split]:
    """The three splits from those ``given`` (``"train"`` at least): a missing ``test`` split
    is a seeded ``test_fraction`` of the training data, then a missing ``val`` split a seeded
    ``val_fraction`` of what remains (seed ``seed + 1``)."""
    rest = given["train"]
    test = given.get("test")
    if test is None:
        rest, test = hold_out(*rest, test_fraction, seed)
    val = given.get("val")
    if val is None:
        rest, val = hold_out(*rest, val_fraction, seed + 1)
    return {"train": rest, "val": val, "test": test}


def _observed(x: Tensor) -> Tensor:
    """The entries of ``x`` that are not NaN, flattened."""
    return x[~torch.isnan(x)] if x.is_floating_point() else x.reshape(-1)


def _is_integer(x: Tensor) -> bool:
    """Whether every observed (non-NaN) entry of ``x`` is an integer."""
    values = _observed(x)
    return not values.is_floating_point() or bool(torch.equal(values, values.round()))


class ConvACDataModule(L.LightningDataModule):
    """Base DataModule: in-memory ``train`` / ``val`` / ``test`` splits of ``(x, y)``.

    Args:
        in_shape: ``(C, H, W)`` of one sample; None reads it from the data (every split must
            then have one shape); given, it is checked against the data.
        num_values: values per variable of integer data (``x`` holds codes in
            ``[0, num_values)``); None reads it from the data (largest value + 1, at least 2).
            Real-valued data has none.
        num_classes: number of labels (1 for unlabelled density-estimation data); None reads
            it from the data (largest label + 1).
        batch_size: samples per batch for every split.
        num_workers: DataLoader worker processes.
        seed: seed of the random splits (independent of the run's seed, so that every run
            sees the same split).
        val_fraction: share of the training data held out for validation, where the
            dataset has no validation split of its own.
        continuous: if True, ``x`` is served as floats for Gaussian leaves: integer data as
            ``x / (num_values - 1)`` in ``[0, 1]`` (:attr:`bin_width` ``1 / (num_values - 1)``),
            real-valued data as it is (:attr:`bin_width` None); if False, ``x`` must hold
            integers (categorical / Bernoulli leaves) and :attr:`bin_width` is None.

        resize: if True, samples whose ``(H, W)`` differ from ``in_shape``'s are resized to it
            (:func:`area_resize`; integer images, ``in_shape`` given), e.g. digits at 4x4 or MNIST
            at 16x16 for a depth sweep.

    After :meth:`setup`, :attr:`in_shape`, :attr:`num_values` and :attr:`num_classes` hold the
    layout read from the data (:attr:`layout`; also stored in :attr:`hparams`, hence in
    checkpoints) and :attr:`has_missing` says whether ``x`` holds NaN entries.
    """

    name: ClassVar[str]

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] | None = None,
        num_values: int | None = None,
        num_classes: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        continuous: bool = False,
        resize: bool = False,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["name"] = self.name  # lets `convac-eval` rebuild the data from a checkpoint
        if in_shape is not None and len(in_shape) != 3:
            raise InvalidValueError(f"data.in_shape must be (C, H, W), got {list(in_shape)}")
        self.in_shape = None if in_shape is None else tuple(int(s) for s in in_shape)
        self.num_values = None if num_values is None else int(num_values)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.continuous = continuous
        self.resize = resize
        self.train_size = None if train_size is None else int(train_size)
        self.has_missing = False
        self._real_valued = False
        self._data: dict[str, Split] | None = None

    @property
    def bin_width(self) -> float | None:
        """Width of one quantization bin of the served ``x`` (continuous integer data only, else None)."""
        return 1.0 / (self.num_values - 1) if self.continuous and self.num_values is not None else None

    @property
    def layout(self) -> dict[str, Any]:
        """``{"in_shape": [C, H, W], "num_values": int or None, "num_classes": int, "train_size":
        int}``: what the configs interpolate (``${data.in_shape}``, ...), read from the data by
        :meth:`setup`."""
        self.setup()
        return {"in_shape": list(self.in_shape), "num_values": self.num_values, "num_classes": self.num_classes,
                "train_size": self.train_size}

    def load_splits(self) -> dict[str, Split]:
        """Read the dataset: ``{"train", "val", "test"}`` -> ``(x (N, C, H, W), y (N,))``.

        ``x`` holds numbers (NaN for a missing entry), ``y`` integer labels.
        """
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once (every stage shares them), read or check the layout and
        convert ``x`` to the served dtype."""
        if self._data is None:
            splits = self.load_splits()
            if self.resize and self.in_shape is not None:  # nothing to resize to without a shape
                splits = {k: (self._resized(k, x), y) for k, (x, y) in splits.items()}
            self._read_layout(splits)
            self._data = {k: self._serve(x, y) for k, (x, y) in splits.items()}
            self.hparams.update(self.layout)

    def _resized(self, split: str, x: Tensor) -> Tensor:
        """``x`` resized to ``in_shape`` (:func:`area_resize`) where its channels match."""
        if x.is_floating_point():
            raise InvalidValueError(f"data.resize=true resizes integer images, but {self._where(split)} holds floats")
        return area_resize(x, self.in_shape[1:]) if x.shape[1] == self.in_shape[0] else x

    def split(self, name: str) -> Split:
        """The served ``(x, y)`` of split ``name`` (``"train"``, ``"val"`` or ``"test"``):
        ``x`` ``(N, C, H, W)`` (long; or float, NaN marking a missing entry, see the module
        docstring), ``y`` ``(N,)`` long."""
        self.setup()
        return self._data[name]

    def check_leaf(self, leaf: Mapping[str, Any], label: str = "the model") -> None:
        """Before a model is built: raise a ValueError if its leaf config ``{"name": ...}``
        needs a number of values (categorical, Bernoulli) and this data is real-valued."""
        self.setup()
        if self._real_valued and leaf.get("name") != "gaussian":
            raise InvalidValueError(f"{label} has {leaf.get('name')} leaves, for integer codes, but data={self.name} serves "
                             f"real values; use model/leaf=gaussian")

    def check_fits(self, model: nn.Module, label: str = "the model") -> None:
        """Raise a ValueError saying what ``model`` (a ConvAC, named ``label`` in the message)
        expects and what this data serves, if it cannot take this data: another sample shape,
        fewer classes than the labels, discrete leaves for continuous data (or the reverse), or
        fewer categorical values than the data holds."""
        self.setup()
        served = f"data={self.name} serves"
        problems = []
        if tuple(model.in_shape) != self.in_shape:
            problems.append(f"{label} takes samples of shape {list(model.in_shape)} but {served} {list(self.in_shape)}")
        if 1 < model.num_classes < self.num_classes:
            problems.append(f"{label} has {model.num_classes} classes but {served} labels in [0, {self.num_classes})")
        if model.leaf_spec.is_discrete == self.continuous:
            kinds = ("continuous values (data.continuous=true)", "integer values (data.continuous=false)")
            problems.append(f"{label} has {model.leaf_spec} leaves but {served} {kinds[not self.continuous]}")
        elif self.num_values is not None and self.num_values > getattr(model.leaf_spec, "num_values", self.num_values):
            problems.append(f"{label} has {model.leaf_spec} leaves but {served} {self.num_values} values")
        if problems:
            raise InvalidValueError("; ".join(problems))

    # ------------------------------------------------------------------ layout
    def _where(self, split: str) -> str:
        return f"the {self.name} {split} split"

    def _read_layout(self, splits: dict[str, Split]) -> None:
        """Read (or check) ``in_shape``, ``num_values``, ``num_classes`` and ``train_size`` over every split."""
        rows = len(splits["train"][0])
        if self.train_size is not None and rows != self.train_size:
            raise InvalidValueError(
                f"data.train_size is {self.train_size} but {self._where('train')} has {rows} examples; "
                f"leave data.train_size unset (null) to read it from the data"
            )
        self.train_size = rows
        first = None
        for split, (x, _) in splits.items():
            shape = list(x.shape[1:])
            if self.in_shape is not None and tuple(shape) != self.in_shape:
                raise InvalidValueError(
                    f"data.in_shape is {list(self.in_shape)} but {self._where(split)} has samples of shape "
                    f"{shape}; set data.in_shape={shape}, or leave it unset (null) to read it from the data"
                    + (" (or data.resize=true to resize the samples to in_shape)" if shape[0] == self.in_shape[0] else "")
                )
            if first is not None and shape != first[1]:
                raise InvalidValueError(
                    f"{self._where(split)} has samples of shape {shape} but the {first[0]} split {first[1]} "
                    f"(mixed shapes: every sample needs one shape)"
                )
            first = first or (split, shape)
        self.in_shape = tuple(first[1])
        self._read_values(splits)
        self._read_classes(splits)

    def _read_values(self, splits: dict[str, Split]) -> None:
        """Check the values of ``x``; read whether some are missing (NaN), whether the data is
        real-valued (non-integer, ``continuous`` only) and, for integer data, ``num_values``."""
        for split, (x, _) in splits.items():
            if x.is_floating_point() and torch.isinf(x).any():
                raise InvalidValueError(f"{self._where(split)} holds infinite values (a missing value is NaN)")
            self.has_missing |= bool(x.is_floating_point() and torch.isnan(x).any())
        real = [split for split, (x, _) in splits.items() if not _is_integer(x)]
        if real:
            values = _observed(splits[real[0]][0])
            example = values[values != values.round()][0].item()
            if not self.continuous:
                raise InvalidValueError(
                    f"{self._where(real[0])} holds non-integer values (e.g. {example:g}) but data.continuous is "
                    f"false: categorical and Bernoulli leaves need integer codes 0, 1, ...; set "
                    f"data.continuous=true (with model/leaf=gaussian) for real values"
                )
            if self.num_values is not None:
                raise InvalidValueError(
                    f"data.num_values is {self.num_values} but {self._where(real[0])} holds real values "
                    f"(e.g. {example:g}); leave data.num_values unset (null) for real-valued data"
                )
            self._real_valued = True
            return
        ranges = {split: _range(_observed(x)) for split, (x, _) in splits.items()}
        ranges = {split: r for split, r in ranges.items() if r is not None}
        if self.num_values is None:
            high = max((r[1] for r in ranges.values()), default=0)
            self.num_values = max(2, high + 1)
        for split, (low, high) in ranges.items():
            if low < 0 or high >= self.num_values:
                raise InvalidValueError(
                    f"data.num_values is {self.num_values} but {self._where(split)} holds values in [{low}, {high}]"
                    if self.hparams.num_values is not None else
                    f"{self._where(split)} holds values in [{low}, {high}]; integer data must be codes 0, 1, ..."
                )

    def _read_classes(self, splits: dict[str, Split]) -> None:
        """Read ``num_classes`` (largest label + 1) or check the labels against it."""
        ranges = {split: _range(y) for split, (_, y) in splits.items()}
        ranges = {split: r for split, r in ranges.items() if r is not None}
        if self.num_classes is None:
            self.num_classes = max((r[1] for r in ranges.values()), default=0) + 1
        for split, (low, high) in ranges.items():
            if low < 0 or high >= self.num_classes:
                raise InvalidValueError(
                    f"data.num_classes is {self.num_classes} but {self._where(split)} has labels in [{low}, {high}]"
                    if self.hparams.num_classes is not None else
                    f"{self._where(split)} has labels in [{low}, {high}]; labels must be class indices 0, 1, ..."
                )

    def _serve(self, x: Tensor, y: Tensor) -> Split:
        """``x`` in the served dtype (see the module docstring), ``y`` long."""
        if self._real_valued:
            x = x.float()
        elif self.continuous:
            x = x.float() / (self.num_values - 1)
        else:
            x = x.float() if self.has_missing else x.long()
        return x, y.long()

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = TensorDataset(*self.split(split))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochRandomSampler(dataset, self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _range(values: Tensor) -> tuple[int, int] | None:
    """``(min, max)`` of integer ``values`` as ints (None when empty)."""
    if values.numel() == 0:
        return None
    low, high = torch.aminmax(values)
    return math.floor(low.item()), math.floor(high.item())
