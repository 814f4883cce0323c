"""The entropy report: level entropies, mapping gaps, ``C``, ``beta`` and the scaling-law checks.

Metric names (DESIGN section 3) are produced by :meth:`EntropyReport.metrics`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch


def _float64(values) -> np.ndarray:
    """A float64 NumPy array of a tensor (on any device) or array: the estimates are small
    host-side computations."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """The coefficients ``beta`` (k,) minimizing ``|y - x beta|`` for the columns ``x`` (n, k)
    and ``y`` (n,), and the rank of ``x`` (``np.linalg.lstsq``: a column without variance, or one
    the others determine, counts for nothing)."""
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    return beta, int(rank)


@dataclass
class Estimate:
    """A Monte Carlo mean and its standard error (0 for exact values)."""

    value: float
    se: float = 0.0

    @staticmethod
    def of(samples, offset: float = 0.0) -> "Estimate":
        """The mean of ``samples`` (n,) and its standard error (float64)."""
        t = _float64(samples)
        n = t.shape[0]
        se = float(t.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return Estimate(float(t.mean()) + offset, se)

    @staticmethod
    def controlled(samples, controls, control_means, offset: float = 0.0) -> "Estimate":
        """The mean of ``samples`` (n,) with ``controls`` (n,) or (n, k), whose exact means
        ``control_means`` (a float or k floats) are known, as control variates: the regression
        estimator

            beta = least squares of t on c (estimated),   mean(t) - (mean(c) - control_means) . beta,

        with the standard error of the regression residuals ``t - c . beta`` (``n - 1 - k``
        degrees of freedom, ``k`` the rank of the centred controls: a control without variance,
        or one the others determine, counts for nothing; :func:`_least_squares`). Least squares
        makes the residuals' spread at most that of ``t``, so it is never worse than plain Monte
        Carlo beyond the factor ``sqrt((n - 1) / (n - 1 - k))``;
        its variance is ``Var(t) (1 - R^2) / n (1 + O(1/n))`` and its bias ``O(1/n)`` (Owen,
        "Monte Carlo theory, methods and examples", section 8.9; Glasserman 2004, section 4.1).
        Computed in float64 on the host.
        """
        t = _float64(samples)
        n = t.shape[0]
        c = _float64(controls).reshape(n, -1)
        means = np.asarray(control_means, dtype=np.float64).reshape(-1)
        t_mean, c_mean = t.mean(), c.mean(0)
        dt, dc = t - t_mean, c - c_mean
        beta, rank = _least_squares(dc, dt)
        value = float(t_mean - (c_mean - means) @ beta)
        if n < rank + 2:
            return Estimate(value + offset, math.nan)
        residual = dt - dc @ beta
        return Estimate(value + offset, math.sqrt(float(residual @ residual) / (n - 1 - rank) / n))


@dataclass
class EntropyReport:
    """Everything the probe measured, in nats (discretized with ``bin_width`` for Gaussian leaves).

    Attributes:
        levels: ``H^l = H(X | Z_l)``, ``l = 0..L``, one-pass estimates (``H^0`` exact).
        levels_tele: ``H^0 + sum`` of the Rao-Blackwellized gaps of layers ``<= l``.
        h_x: ``H(X)``; ``h_x_tele`` its telescoped estimate; ``h_x_given_y``: ``H(X | Y)``
            (classifiers only, else None).
        gaps: per layer ``l = 1..L``, the gap ``Delta_R`` of every sum node, ``(H_{l-1}, W_{l-1})``,
            with standard errors ``gap_se`` and caps ``caps``; ``root_gap`` / ``root_cap`` the root's.
        bounds: analytic ``(low, high)`` bounds of ``H^l`` and ``h_x_bounds`` of ``H(X)``.
        node_entropies: optional per-node ``H(node_{l,i,k})`` ``(K_l, H_l, W_l)`` with SEs.
        discrete: whether the entropies are discrete (or discretized), so ratios are meaningful.
    """

    levels: list[Estimate]
    levels_tele: list[Estimate]
    h_x: Estimate
    h_x_tele: Estimate
    h_x_given_y: Estimate | None
    gaps: list[torch.Tensor]
    gap_se: list[torch.Tensor]
    caps: list[torch.Tensor]
    root_gap: Estimate
    root_cap: float
    bounds: list[tuple[float, float]]
    h_x_bounds: tuple[float, float]
    num_variables: int
    discrete: bool
    num_samples: int
    seconds: float
    node_entropies: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ derived quantities
    @property
    def num_levels(self) -> int:
        return len(self.levels) - 1

    @property
    def num_mappings(self) -> int:
        """Sum nodes over all layers plus the root (``2N - 1`` for a binary HT, ``N + 1`` for CP)."""
        return sum(g.numel() for g in self.gaps) + 1

    @property
    def layer_gaps(self) -> list[Estimate]:
        """``C_l``, ``l = 1..L``: the sum of the layer's Rao-Blackwellized gaps."""
        # the standard error of a sum of independent estimates: the root of their summed variances
        return [Estimate(float(g.sum()), float(torch.linalg.vector_norm(se))) for g, se in zip(self.gaps, self.gap_se)]

    @property
    def c_max(self) -> float:
        """The paper's ``C``: the largest gap of any mapping."""
        return max([float(g.max()) for g in self.gaps] + [self.root_gap.value])

    @property
    def cap_max(self) -> float:
        return max([float(c.max()) for c in self.caps] + [self.root_cap])

    @property
    def betas(self) -> list[float]:
        """``beta_l = H^l / H^{l-1}`` for ``l = 1..L`` then ``beta_top = H(X) / H^L`` (NaN if not discrete)."""
        if not self.discrete:
            return [math.nan] * (self.num_levels + 1)
        chain = [e.value for e in self.levels] + [self.h_x.value]
        return [_ratio(a, b) for a, b in zip(chain[1:], chain[:-1])]

    @property
    def min_gap_z(self) -> float:
        """The smallest ``Delta_R / SE_R`` (NaN where every standard error is 0)."""
        z = torch.cat([(g / se).flatten() for g, se in zip(self.gaps, self.gap_se)])
        smallest = [float(z.where(z.isfinite(), math.inf).min())] if z.numel() else []  # no 0 / 0 or gap / 0
        finite = [v for v in smallest + [_ratio(self.root_gap.value, self.root_gap.se)] if math.isfinite(v)]
        return min(finite, default=math.nan)

    def checks(self) -> dict[str, float]:
        """Slack of the scaling-law inequalities (Thm 4 / Thm 5, rigorous form; >= 0 when they hold).

        * additive: ``H(X) - H^0 <= n_mappings * C_max`` and ``<= sum_R cap_R``;
        * ratio: ``H(X) / H^0 <= beta_max^(L+1)`` (NaN for differential entropies).
        """
        return self._checks(self.c_max, self.betas)

    def _checks(self, c_max: float, betas: list[float]) -> dict[str, float]:
        """:meth:`checks` given :attr:`c_max` and :attr:`betas` (which :meth:`metrics` computes once for both)."""
        growth = self.h_x.value - self.levels[0].value
        total_cap = sum(float(c.sum()) for c in self.caps) + self.root_cap
        beta_max = max(betas) if self.discrete else math.nan
        ratio = _ratio(self.h_x.value, self.levels[0].value)
        return {
            "additive_slack": self.num_mappings * c_max - growth,
            "cap_slack": total_cap - growth,
            "ratio_slack": beta_max ** (self.num_levels + 1) - ratio if self.discrete else math.nan,
        }

    def metrics(self) -> dict[str, float]:
        """A flat ``{name: value}`` dict with the metric names of DESIGN section 3."""
        out: dict[str, float] = {}
        for level, (est, tele) in enumerate(zip(self.levels, self.levels_tele)):
            out[f"entropy/H{level}"] = est.value
            out[f"entropy/H{level}_se"] = est.se
            out[f"entropy/H{level}_tele"] = tele.value
        out["entropy/H_X"] = self.h_x.value
        out["entropy/H_X_se"] = self.h_x.se
        out["entropy/H_X_tele"] = self.h_x_tele.value
        out["entropy/H_X_bpd"] = self.h_x.value / (self.num_variables * math.log(2))
        if self.h_x_given_y is not None:
            out["entropy/H_X_given_Y"] = self.h_x_given_y.value
        for level, (gap, positions) in enumerate(zip(self.layer_gaps, self.gaps), start=1):
            out[f"scaling/C{level}"] = gap.value
            out[f"scaling/n_mappings{level}"] = float(positions.numel())
        out["scaling/C_top"] = self.root_gap.value
        out["scaling/C_max"] = c_max = self.c_max
        out["scaling/cap_max"] = self.cap_max
        betas = self.betas
        for level, beta in enumerate(betas[:-1], start=1):
            out[f"scaling/beta{level}"] = beta
        out["scaling/beta_top"] = betas[-1]
        out["scaling/beta_max"] = max(betas) if self.discrete else math.nan
        checks = self._checks(c_max, betas)
        out["scaling/additive_slack"] = checks["additive_slack"]
        out["scaling/cap_slack"] = checks["cap_slack"]
        out["scaling/ratio_slack"] = checks["ratio_slack"]
        out["scaling/min_gap_z"] = self.min_gap_z
        out["entropy/probe_seconds"] = self.seconds
        return out

    def gap_rows(self) -> list[dict[str, float]]:
        """Every mapping's gap as one row ``{level, row, column, gap, se}`` (nats): the long format of
        ``gaps.csv``.

        ``level`` is the fusion layer ``l = 1..L`` of the sum node and ``(row, column)`` its position on
        grid ``l - 1`` (any ``(H_{l-1}, W_{l-1})``, square or not), so the rows of level ``l`` add up to
        ``C_l``; the root mapping is level ``L + 1`` at ``(0, 0)`` (its gap is ``C_top``). All rows
        add up to the telescoped ``H(X) - H^0`` (``h_x_tele - levels[0]``).
        """
        rows = []
        for level, (gap, se) in enumerate(zip(self.gaps, self.gap_se), start=1):
            positions = itertools.product(range(gap.shape[0]), range(gap.shape[1]))
            for (r, c), value, error in zip(positions, gap.flatten().tolist(), se.flatten().tolist()):
                rows.append({"level": level, "row": r, "column": c, "gap": value, "se": error})
        rows.append({"level": self.num_levels + 1, "row": 0, "column": 0,
                     "gap": self.root_gap.value, "se": self.root_gap.se})
        return rows

    def summary(self) -> str:
        """A few lines for a terminal."""
        chain = " <= ".join(f"{e.value:.2f}" for e in self.levels) + f" <= H(X)={self.h_x.value:.2f}±{self.h_x.se:.2f}"
        lines = [f"entropy chain (nats): {chain}", f"C_max={self.c_max:.3f}  cap_max={self.cap_max:.3f}  mappings={self.num_mappings}"]
        lines += self.notes
        return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b
