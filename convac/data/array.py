"""Your own arrays: a ``.npy`` or ``.npz`` file of samples (and labels).

* ``.npy``: one array ``x`` (unlabelled);
* ``.npz``: ``x`` and optionally ``y`` (class labels ``(N,)``); or given splits ``x_train``
  (required), ``x_val``, ``x_test``, each with its ``y_<split>`` when labelled.

``x`` is ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or ``(N, D)`` (a sequence, served as
``(N, 1, 1, D)``). Integer data (integer dtype, or floats holding integers) is for categorical
/ Bernoulli leaves; real-valued floats for Gaussian leaves (``data.continuous=true``). NaN
entries are missing values, marginalized in training and evaluation. Splits not given are
seeded fractions (:func:`convac.data.base.fill_splits`).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from convac.data.base import SPLITS, ConvACDataModule, Split, fill_splits
from convac.errors import InvalidValueError, MissingFileError

SUFFIXES = (".npy", ".npz")


def _samples(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """``array`` as an ``(N, C, H, W)`` tensor: int64 for integer / bool dtypes, else float64."""
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        tensor = torch.from_numpy(array.astype(np.int64))
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(array.astype(np.float64))
    else:
        raise InvalidValueError(f"{path}: {key} has dtype {array.dtype}; expected integers or floats")
    shapes = {2: lambda t: t[:, None, None, :], 3: lambda t: t[:, None], 4: lambda t: t}
    if tensor.ndim not in shapes:
        raise InvalidValueError(f"{path}: {key} has shape {list(array.shape)}; expected (N, C, H, W), (N, H, W) or (N, D)")
    return shapes[tensor.ndim](tensor)


def _labels(array: np.ndarray, key: str, num_samples: int, path: Path) -> torch.Tensor:
    """Class labels ``(N,)`` long; a ValueError names ``key`` if they are not integers."""
    if array.shape != (num_samples,):
        raise InvalidValueError(f"{path}: {key} has shape {list(array.shape)}; expected ({num_samples},), one label per sample")
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    if np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and (array == np.round(array)).all():
        return torch.from_numpy(array.astype(np.int64))
    bad = array[~np.isfinite(array) | (array != np.round(array))] if np.issubdtype(array.dtype, np.floating) else array
    raise InvalidValueError(f"{path}: {key} holds non-integer labels (e.g. {bad.flat[0].item()!r}); labels must be class indices 0, 1, ...")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npy`` (as ``x``) or ``.npz`` file, loaded without pickles."""
    if path.suffix not in SUFFIXES:
        raise InvalidValueError(f"data.path={path}: expected a .npy or .npz file")
    if not path.is_file():
        raise MissingFileError(f"data.path={path.resolve()}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if path.suffix == ".npy":
            return {"x": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if "Object arrays" in str(e):  # numpy stores rows of mixed shapes as an object array
            raise InvalidValueError(f"{path} holds an object array (rows of mixed shapes?); expected numeric arrays, "
                             f"every sample of one shape") from e
        raise InvalidValueError(f"{path}: not a readable {path.suffix} file ({e})") from e


def read_array_splits(path: str | Path) -> dict[str, Split]:
    """The splits a ``.npy`` / ``.npz`` file gives: ``{"train": (x, y)}`` for ``x`` [+ ``y``],
    else those of ``x_train``, ``x_val``, ``x_test`` [+ ``y_<split>``]. ``x`` is
    ``(N, C, H, W)`` int64 or float64 (NaN missing), ``y`` ``(N,)`` int64 (0 when unlabelled).
    A ValueError names the file and the array that is wrong."""
    path = Path(path)
    arrays = _read_arrays(path)
    whole, split_keys = {"x", "y"}, {f"{v}_{s}" for v in "xy" for s in SPLITS}
    if "x" in arrays and not set(arrays) - whole:
        names = {"train": ("x", "y")}
    elif "x_train" in arrays and not set(arrays) - split_keys:
        names = {s: (f"x_{s}", f"y_{s}") for s in SPLITS if f"x_{s}" in arrays}
    else:
        raise InvalidValueError(
            f"{path} holds the arrays {sorted(arrays)}; expected x (and y), or x_train, x_val, x_test "
            f"(and y_train, y_val, y_test)"
        )
    labelled = {s: y in arrays for s, (_, y) in names.items()}
    if len(set(labelled.values())) > 1:
        raise InvalidValueError(f"{path}: labels for some splits only ({', '.join(s for s, has in labelled.items() if has)}); "
                         f"give y for every split or for none")
    splits = {}
    for split, (x_key, y_key) in names.items():
        x = _samples(arrays[x_key], x_key, path)
        y = (_labels(arrays[y_key], y_key, len(x), path) if labelled[split]
             else torch.zeros(len(x), dtype=torch.long))
        splits[split] = (x, y)
    return splits


class ArrayDataModule(ConvACDataModule):
    """Samples from ``path`` (a ``.npy`` / ``.npz`` file, see the module docstring).

    The layout is read from the arrays: ``in_shape`` the sample shape, ``num_values`` the
    largest value + 1 (integer data; overridable), ``num_classes`` the largest label + 1.
    Splits the file does not give: ``test_fraction`` of the samples for testing, then
    ``val_fraction`` of the rest for validation, seeded by ``seed``.
    """

    name = "array"

    def __init__(self, path: str, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.test_fraction = test_fraction

    def load_splits(self) -> dict[str, Split]:
        return fill_splits(read_array_splits(self.path), self.test_fraction, self.val_fraction, self.seed)
