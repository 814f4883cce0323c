"""Atomic file writes for the run folder: a reader (or a resumed run) sees the old file or the new
one, never a half-written one, even when the process is killed while writing.

Lightning's own ``_atomic_save`` writes checkpoints to a temporary file in the *system* temp
folder and moves it into place; when that folder is on another filesystem than the run folder
(a node-local ``/tmp`` and a shared checkpoint disk), the move is a copy, which is not atomic and
leaves the temporary file behind if killed. :class:`AtomicCheckpointIO` writes next to the target.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open ``<path>.tmp`` (same folder) for writing; on success flush it to disk and rename it onto
    ``path`` (``os.replace``, atomic on POSIX); on any error remove it and leave ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv_atomically(path: str | Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write the CSV ``path`` (its folder made when absent) with the header ``columns`` and
    ``rows``, through :func:`atomic_write`: the histories of a run folder are rewritten whole
    when a resumed run replaces rows or a new column appears."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def is_local_path(path: Any) -> bool:
    """Whether ``path`` is a plain local path (no URL such as ``s3://...`` or ``file://...``)."""
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local saves go through :func:`atomic_write`, so a
    kill during a save cannot corrupt ``last.ckpt`` (remote URLs keep Lightning's own path)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local_path(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch.save(checkpoint, f)
