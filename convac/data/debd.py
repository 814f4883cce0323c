"""The binary density-estimation benchmarks (DEBD): ``NAME.{train,valid,test}.data`` files.

Each file holds comma-separated 0/1 rows, one sample of ``D`` variables a row; a sample is
served as a 1-D sequence ``(1, 1, D)``. There are no labels (``y`` is 0).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from convac.data.base import ConvACDataModule, Split
from convac.errors import InvalidValueError, MissingFileError

# our split name -> the DEBD file suffix
_FILE_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def read_debd(path: str | Path) -> torch.Tensor:
    """One DEBD file as a ``(N, 1, 1, D)`` long tensor (0/1 values: checked by the DataModule
    against ``num_values``). A ValueError names the file if it is empty or not rows of
    comma-separated integers of one length."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # numpy warns (only) on an empty file
            rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, UserWarning) as e:
        reason = str(e).split("; use `usecols`")[0]  # numpy's hint does not apply here
        raise InvalidValueError(f"{path}: expected rows of comma-separated 0/1 values of one length; {reason}") from e
    return torch.from_numpy(rows)[:, None, None, :]


class DEBDDataModule(ConvACDataModule):
    """A DEBD set ``dataset`` from ``root`` (``root/NAME.*.data`` or ``root/NAME/NAME.*.data``).

    ``in_shape`` is ``(1, 1, D)`` with ``D`` the set's number of variables (16 for nltcs, 69
    for plants), read from the files when not given; a given one that differs is reported.

    ``max_train_rows``: when set, only the first ``max_train_rows`` rows of the training file
    are used (the validation and test splits stay whole): the small-data cuts of the density
    experiments (``data.max_train_rows=500``). None: every row.
    """

    name = "debd"

    def __init__(
        self,
        root: str,
        dataset: str = "nltcs",
        in_shape: list[int] | tuple[int, ...] | None = None,
        num_values: int | None = 2,
        num_classes: int | None = 1,
        max_train_rows: int | None = None,
        **kwargs,
    ) -> None:
        if max_train_rows is not None and (isinstance(max_train_rows, bool) or int(max_train_rows) != max_train_rows
                                           or max_train_rows < 1):
            raise InvalidValueError(f"data.max_train_rows must be a positive number of rows or null, got {max_train_rows!r}")
        super().__init__(in_shape, num_values, num_classes, **kwargs)
        self.root = Path(root)
        self.dataset = dataset
        self.max_train_rows = None if max_train_rows is None else int(max_train_rows)

    def expected_files(self) -> list[str]:
        return [f"{self.dataset}.{suffix}.data" for suffix in _FILE_SPLITS.values()]

    def _folder(self) -> Path:
        """The folder holding the files: ``root/NAME`` if it has them, else ``root``."""
        nested = self.root / self.dataset
        return nested if (nested / self.expected_files()[0]).is_file() else self.root

    def load_splits(self) -> dict[str, Split]:
        folder = self._folder()
        missing = [name for name in self.expected_files() if not (folder / name).is_file()]
        if missing:
            raise MissingFileError(
                f"debd (data.dataset={self.dataset}) needs {', '.join(self.expected_files())} "
                f"in data.root={self.root.resolve()} or in its subfolder {self.dataset}/; "
                f"missing: {', '.join(missing)}"
            )
        splits = {}
        for split, suffix in _FILE_SPLITS.items():
            x = read_debd(folder / f"{self.dataset}.{suffix}.data")
            if split == "train" and self.max_train_rows is not None:
                x = x[: self.max_train_rows]  # the first rows: a small-data cut
            splits[split] = (x, torch.zeros(len(x), dtype=torch.long))
        return splits
