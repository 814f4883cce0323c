"""Atomic file writes for the run folder: a reader (or a resumed run) sees the old file or the new
one, never a half-written one, even when the process is killed while writing.

Lightning's own ``_atomic_save`` writes checkpoints to a temporary file in the *system* temp
folder and moves it into place; when that folder is on another filesystem than the run folder
(a node-local ``/tmp`` and a shared checkpoint disk), the move is a copy, which is not atomic and
leaves the temporary file behind if killed. :class:`AtomicCheckpointIO` writes next to the target.
"""
from __future__ import annotations

import csv
import io
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


class CsvHistory:
    """A CSV history of a run folder (``metrics.csv``, ``entropy.csv``, ``gaps.csv``), one row per
    logged step or epoch, kept across a resume at little cost per write.

    The first :meth:`write` of this object, whose rows start at ``start`` (a step or an epoch in
    column ``key``), drops the file's rows with ``key >= start``: those of a killed run after its
    last checkpoint, which the resumed run writes again (a fresh run in the same folder starts at
    0, hence a fresh file). That write, and any write that brings a new column, rewrites the file
    atomically (:func:`write_csv_atomically`; the header is the union of the columns in order of
    appearance, or sorted with ``sort_columns``). Every other write appends its rows with one ``write`` call, so the cost of a
    write does not grow with the history (the default run's ``gaps.csv`` gains a row per mapping
    every epoch; ``python scripts/callback_cost.py`` measures the probe callback's cost per epoch,
    its writes included) and a kill leaves whole rows behind.
    """

    def __init__(self, path: str | Path, key: str, sort_columns: bool = False) -> None:
        self.path = Path(path)
        self.key = key
        self.sort_columns = sort_columns
        self.columns: list[str] | None = None  # the header as this object last wrote it
        self._known: frozenset[str] = frozenset()  # the same columns, for the check of every write

    def read(self) -> list[dict[str, str]]:
        """The file's rows, empty cells dropped (an absent file has none)."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self.columns is not None and all(row.keys() <= self._known for row in rows):
            text = io.StringIO()  # the rows hold no other columns: a plain writer (DictWriter checks every row)
            csv.writer(text).writerows([[row.get(column, "") for column in self.columns] for row in rows])
            with self.path.open("a", newline="") as f:
                f.write(text.getvalue())
            return
        new_columns = list(dict.fromkeys(k for row in rows for k in row))
        if self.columns is None:
            start = float(rows[0][self.key])
            kept = [row for row in self.read() if float(row[self.key]) < start]
        else:
            kept = self.read()
        columns = list(dict.fromkeys([*(k for row in kept for k in row), *new_columns]))
        columns = sorted(columns) if self.sort_columns else columns
        write_csv_atomically(self.path, columns, kept + rows)
        self.columns, self._known = columns, frozenset(columns)


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
