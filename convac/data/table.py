"""Your own table: a CSV file of integer-coded columns, one sample a row.

The first row is a header when it holds a cell that is not a number (or as ``header`` says).
A cell holds an integer code ``0, 1, ...`` (real numbers with ``data.continuous=true`` for
Gaussian leaves); an empty cell or ``NaN`` is a missing value, marginalized in training and
evaluation. One column (``label_column``, a header name or a 0-based position) may hold
class labels. The other ``D`` columns are served as a sequence ``(1, 1, D)``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from convac.data.base import ConvACDataModule, Split, fill_splits
from convac.errors import InvalidValueError, MissingFileError


def _is_number_or_missing(cell: str) -> bool:
    try:
        float(cell.strip() or "nan")
        return True
    except ValueError:
        return False


def _read_rows(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of every non-blank row."""
    if not path.is_file():
        raise MissingFileError(f"data.path={path.resolve()}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(line, row) for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1) if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidValueError(f"{path}: not a readable CSV text file ({e})") from e
    if not rows:
        raise InvalidValueError(f"{path}: no rows; expected {delimiter!r}-separated integer codes, one sample a row")
    return rows


def _cell_value(path: Path, line: int, column: str, cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise InvalidValueError(
            f"{path}, line {line}, column {column!r}: {cell!r} is not a number (a cell holds an integer code, "
            f"or is empty or NaN when missing)"
        ) from None


def _to_floats(path: Path, rows: list[tuple[int, list[str]]], columns: list[str]) -> np.ndarray:
    """The cells as an ``(N, D)`` float64 array, NaN for an empty or ``NaN`` cell; a ValueError
    names the line, column and cell that is not a number."""
    cells = np.char.strip(np.array([row for _, row in rows], dtype=str))
    cells = np.where(cells == "", "nan", cells)  # (a new array: "nan" may not fit the cells' width)
    try:
        return cells.astype(np.float64)  # fast; on failure, cell by cell to name the bad one
    except ValueError:
        return np.array([[_cell_value(path, line, column, str(cell)) for column, cell in zip(columns, row)]
                         for (line, _), row in zip(rows, cells)])


def _label_index(path: Path, label_column: str, columns: list[str], header: bool) -> int:
    if label_column in columns and header:
        return columns.index(label_column)
    if not header and label_column.isdigit() and int(label_column) < len(columns):
        return int(label_column)
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    where = f"the header's columns {shown}" if header else f"positions 0..{len(columns) - 1} (the file has no header row)"
    raise InvalidValueError(f"{path}: data.label_column={label_column!r} is not one of {where}")


def _labels(path: Path, values: np.ndarray, rows: list[tuple[int, list[str]]], column: str) -> torch.Tensor:
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if len(bad):
        line, cell = rows[bad[0]][0], values[bad[0]]
        raise InvalidValueError(f"{path}, line {line}: the label column {column!r} holds {cell:g}; labels must be class "
                         f"indices 0, 1, ... in every row")
    return torch.from_numpy(values.astype(np.int64))


def read_table(
    path: str | Path, label_column: str | None = None, header: bool | None = None, delimiter: str = ","
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``x`` ``(N, 1, 1, D)`` float64 (NaN missing), labels ``y`` ``(N,)`` long (0 without a
    label column) and the ``D`` column names of a CSV file (``header=None``: the first row is a
    header when one of its cells is not a number). A ValueError names the file, and the line
    and column where a row is ragged or a cell is not a number."""
    path = Path(path)
    rows = _read_rows(path, delimiter)
    first = rows[0][1]
    if header is None:
        header = not all(_is_number_or_missing(cell) for cell in first)
    columns = [cell.strip() for cell in first] if header else [str(i) for i in range(len(first))]
    data = rows[1:] if header else rows
    if not data:
        raise InvalidValueError(f"{path}: a header row and no data rows")
    for line, row in data:
        if len(row) != len(columns):
            reference = "the header has" if header else f"line {data[0][0]} has"
            raise InvalidValueError(f"{path}, line {line}: {len(row)} cells but {reference} {len(columns)} "
                             f"(mixed row lengths: every row needs one cell per column)")
    values = _to_floats(path, data, columns)
    if label_column is None:
        y = torch.zeros(len(values), dtype=torch.long)
    else:
        index = _label_index(path, str(label_column), columns, header)
        y = _labels(path, values[:, index], data, columns[index])
        values, columns = np.delete(values, index, axis=1), columns[:index] + columns[index + 1:]
    return torch.from_numpy(values)[:, None, None, :], y, columns


class TableDataModule(ConvACDataModule):
    """A CSV table at ``path`` (see the module docstring) as sequences ``(1, 1, D)``.

    The layout is read from the file: ``D`` the number of feature columns, ``num_values`` the
    largest code + 1 (overridable), ``num_classes`` the largest label + 1. ``test_fraction``
    of the rows are held out for testing, then ``val_fraction`` of the rest for validation,
    seeded by ``seed``. :attr:`columns` names the ``D`` variables, in order.
    """

    name = "table"

    def __init__(
        self,
        path: str,
        label_column: str | None = None,
        header: bool | None = None,
        delimiter: str = ",",
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.label_column = label_column
        self.header = header
        self.delimiter = delimiter
        self.test_fraction = test_fraction
        self.columns: list[str] | None = None

    def load_splits(self) -> dict[str, Split]:
        x, y, self.columns = read_table(self.path, self.label_column, self.header, self.delimiter)
        return fill_splits({"train": (x, y)}, self.test_fraction, self.val_fraction, self.seed)
