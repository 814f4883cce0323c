"""Checks of constructor arguments: each raises a one-line ``ValueError`` naming the argument,
what was expected and what was found, so a bad config stops before anything is built or written.

``check_positive_int("num_components", 0)`` -> ``num_components must be a positive integer, got 0``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from convac.errors import InvalidValueError

Grid = tuple[int, int]


def is_positive_int(value) -> bool:
    """An integer (Python or NumPy; not a bool, not a float) ``>= 1``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (not a bool, not a float) ``>= minimum``."""
    if not is_positive_int(value) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_members(members, num_repetitions: int, name: str = "ensemble_members") -> int:
    """``members`` as an int, if it is a positive integer dividing ``num_repetitions`` (the
    repetitions split into equal groups of ensemble members; :mod:`convac.training.ensemble`)."""
    members = check_positive_int(name, members)
    if num_repetitions % members:
        raise InvalidValueError(f"{name} must divide num_repetitions (equal groups of repetitions; 1 for one mixture "
                         f"fitted jointly), got {members} members for {num_repetitions} repetitions")
    return members


def check_positive_ints(name: str, values, length: int | None = None) -> list[int]:
    """``values`` as a list of ints, if it is a sequence (of ``length`` entries, when given) of
    positive integers."""
    ok = isinstance(values, Sequence) and not isinstance(values, str)
    if not ok or (length is not None and len(values) != length) or not all(is_positive_int(v) for v in values):
        count = f"{length} positive integers" if length is not None else "a list of positive integers"
        raise InvalidValueError(f"{name} must be {count}, got {values!r}")
    return [int(v) for v in values]


def check_positive_float(name: str, value) -> float:
    """``value`` as a float, if it is a finite real number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_flag(name: str, value) -> bool:
    """``value`` if it is a bool (``share_leaves="no"`` would otherwise read as True)."""
    if not isinstance(value, bool):
        raise InvalidValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_grid(name: str, value) -> Grid:
    """An ``(h, w)`` pair of positive integers; an int ``n`` means ``(n, n)``."""
    pair = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(is_positive_int(v) for v in pair):
        raise InvalidValueError(f"{name} must be an int or an (h, w) pair of positive integers, got {value!r}")
    return (int(pair[0]), int(pair[1]))


