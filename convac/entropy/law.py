"""Fitting the information scaling law across runs (the paper's Thm 4 / Thm 5 as laws).

The additive law reads ``H(X) - H^0 ~ c * n_mappings``: every mapping adds about ``c`` nats (the
paper's ``C`` when every gap is at its maximum; the measured ``c`` is the typical gap). The ratio
law reads ``log(H(X) / H^0) ~ (L + 1) log beta``. Both are lines through the origin, fitted by
least squares over the runs of a sweep, with a percentile bootstrap confidence interval that
resamples whole runs (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 9 and 13).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from convac.errors import InvalidValueError


@dataclass
class SlopeFit:
    """``y ~ slope * x`` over ``num_runs`` runs; ``[ci_low, ci_high]`` is the percentile bootstrap
    interval of level ``confidence`` from ``num_boot`` resamples of the runs (NaN with one run)."""

    slope: float
    ci_low: float
    ci_high: float
    num_runs: int
    confidence: float
    num_boot: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.slope:.4g} [{self.ci_low:.4g}, {self.ci_high:.4g}] "
                f"({100 * self.confidence:g}% bootstrap interval, {self.num_runs} runs)")


def slope_through_origin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y ~ s x`` along the last axis: ``s = sum(x y) / sum(x^2)``."""
    return (x * y).sum(-1) / (x * x).sum(-1)


def fit_slope(x, y, confidence: float = 0.95, num_boot: int = 2000, seed: int = 0) -> SlopeFit:
    """Fit ``y ~ slope * x`` (least squares through the origin) over runs ``x``, ``y`` (``(n,)``,
    ``x > 0``), with a percentile bootstrap interval: ``num_boot`` resamples of the ``n`` runs
    drawn with replacement (seeded by ``seed``), refitted, and their ``(1 -/+ confidence) / 2``
    quantiles."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise InvalidValueError(f"expected two 1-D arrays of one length (one value per run), got shapes {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InvalidValueError("expected finite values for every run")
    if np.any(x <= 0):
        raise InvalidValueError(f"expected positive x (mapping counts or depths), got {x.min()}")
    if not 0 < confidence < 1:
        raise InvalidValueError(f"confidence must be in (0, 1), got {confidence}")
    slope = float(slope_through_origin(x, y))
    low = high = math.nan
    if len(x) > 1:
        picks = np.random.default_rng(seed).integers(len(x), size=(num_boot, len(x)))
        boot = slope_through_origin(x[picks], y[picks])
        low, high = (float(q) for q in np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return SlopeFit(slope, low, high, len(x), confidence, num_boot)
