"""MNIST and Fashion-MNIST from the standard IDX files in a local folder (no download).

The folder ``root`` holds ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte``
(each plain or ``.gz``) for ``prefix`` ``train`` and / or ``t10k``.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from convac.data.base import ConvACDataModule, Split, hold_out
from convac.errors import InvalidValueError, MissingFileError

# IDX type codes (the third byte of the magic number) -> numpy dtype (big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# `split` -> which files feed train(+val) and test, and the rows of each used.
# "t10k" is the test-set benchmark split: first 8,000 t10k images train(+val), last 2,000 test.
SPLIT_FILES = {
    "train": (("train", slice(None)), ("t10k", slice(None))),
    "t10k": (("t10k", slice(0, 8000)), ("t10k", slice(8000, None))),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into an array of the shape its header gives.

    A ValueError names the file and what is wrong: an unreadable gzip stream, a wrong magic
    number, or a size that disagrees with the header (a truncated or padded file).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InvalidValueError(f"{path}: corrupt gzip stream ({e})") from e
    if len(data) < 4:
        raise InvalidValueError(f"{path} is not an IDX file (expected a 4-byte magic number, the file has {len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise InvalidValueError(f"{path} is not an IDX file (magic number {data[:4].hex()}, expected 0000 then a type "
                         f"code in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and the number of dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidValueError(f"{path}: truncated header ({len(data)} bytes, expected {header} for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(data) != expected:
        raise InvalidValueError(f"{path}: header says shape {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def find_idx(root: str | Path, stem: str) -> Path | None:
    """The file ``root/stem`` or ``root/stem.gz``, whichever exists (None if neither)."""
    root = Path(root)
    return next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)


def _require(root: str | Path, stem: str) -> Path:
    path = find_idx(root, stem)
    if path is None:
        raise MissingFileError(f"expected {stem} or {stem}.gz in {Path(root).resolve()}")
    return path


def load_idx_pair(root: str | Path, prefix: str) -> Split:
    """Images ``(N, 1, 28, 28)`` long and labels ``(N,)`` long of one IDX ``prefix``."""
    images, labels = (
        read_idx(_require(root, f"{prefix}-{kind}"))
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    if images.ndim != 3 or labels.ndim != 1 or len(labels) != len(images):
        raise InvalidValueError(
            f"{root}: expected {prefix} images of shape (N, H, W) and labels of shape (N,), "
            f"found images {images.shape} and labels {labels.shape}"
        )
    return torch.from_numpy(images.astype(np.int64)).unsqueeze(1), torch.from_numpy(
        labels.astype(np.int64)
    )


class MNISTDataModule(ConvACDataModule):
    """MNIST from IDX files in ``root``: ``(N, 1, 28, 28)`` integers in ``[0, 256)``, 10 classes.

    ``split="train"``: the 60,000 training images (``val_fraction`` held out) and the 10,000
    test images. ``split="t10k"``: only the test-set files, first 8,000 images for training
    (``val_fraction`` held out) and the last 2,000 for testing.
    """

    name = "mnist"

    def __init__(
        self,
        root: str,
        split: str = "train",
        in_shape: list[int] | tuple[int, ...] | None = None,
        num_values: int | None = 256,
        num_classes: int | None = 10,
        **kwargs,
    ) -> None:
        super().__init__(in_shape, num_values, num_classes, **kwargs)
        if split not in SPLIT_FILES:
            raise InvalidValueError(f"data.split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        self.root = Path(root)
        self.split_name = split

    def expected_files(self) -> list[str]:
        """The IDX file names this split reads (each may also end in ``.gz``)."""
        prefixes = sorted({prefix for prefix, _ in SPLIT_FILES[self.split_name]})
        return [f"{p}-{kind}" for p in prefixes for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]

    def load_splits(self) -> dict[str, Split]:
        missing = [name for name in self.expected_files() if find_idx(self.root, name) is None]
        if missing:
            raise MissingFileError(
                f"{self.name} (data.split={self.split_name}) needs the IDX files "
                f"{', '.join(self.expected_files())} (each plain or .gz) in data.root="
                f"{self.root.resolve()}; missing: {', '.join(missing)}"
            )
        (train_prefix, train_rows), (test_prefix, test_rows) = SPLIT_FILES[self.split_name]
        x, y = load_idx_pair(self.root, train_prefix)
        train, val = hold_out(x[train_rows], y[train_rows], self.val_fraction, self.seed)
        x, y = load_idx_pair(self.root, test_prefix)
        return {"train": train, "val": val, "test": (x[test_rows], y[test_rows])}


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: the same IDX layout, file names and splits as :class:`MNISTDataModule`."""

    name = "fashion_mnist"
