"""The entropy report: level entropies, mapping gaps, ``C``, ``beta`` and the scaling-law checks.

Metric names (DESIGN section 3) are produced by :meth:`EntropyReport.metrics`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

# The normal quantile of the confidence values of C_max and beta_max (``upper`` and ``lower`` of
# :class:`MaxEstimate`): each is one-sided at 97.5%, so ``[lower, upper]`` is a 95% interval.
CONFIDENCE_Z = 1.96


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
        terms, rank = controlled_terms(samples, controls, control_means)
        return Estimate.of_controlled_terms(terms, rank, offset)

    @staticmethod
    def of_controlled_terms(terms: np.ndarray, rank: int, offset: float = 0.0) -> "Estimate":
        """:meth:`controlled` from the per-sample terms ``u`` (n,) of :func:`controlled_terms` and the
        rank ``k`` of its controls: the mean of ``u`` and the standard error of its deviations (the
        regression residuals) on ``n - 1 - k`` degrees of freedom."""
        n = terms.shape[0]
        value = float(terms.mean())
        if n < rank + 2:
            return Estimate(value + offset, math.nan)
        residual = terms - value
        return Estimate(value + offset, math.sqrt(float(residual @ residual) / (n - 1 - rank) / n))


def controlled_terms(samples, controls, control_means) -> tuple[np.ndarray, int]:
    """The per-sample terms of the regression estimator of :meth:`Estimate.controlled`:
    ``u_i = t_i - (c_i - control_means) . beta`` (n,), ``beta`` the least-squares coefficients of
    ``t`` on the centred controls, and the rank ``k`` of those (:func:`_least_squares`).

    ``mean(u)`` is the estimate and ``u - mean(u)`` are the regression residuals, so ``u`` is what
    a function of several controlled estimates (a ratio of two levels, a half of the samples) is
    linearized with. Float64 on the host."""
    t = _float64(samples)
    n = t.shape[0]
    c = _float64(controls).reshape(n, -1)
    means = np.asarray(control_means, dtype=np.float64).reshape(-1)
    c_mean = c.mean(0)
    beta, rank = _least_squares(c - c_mean, t - t.mean())
    return t - (c - means) @ beta, rank


def halves(n: int) -> tuple[slice, slice]:
    """The two disjoint halves of ``n`` samples used for sample splitting: the first ``n // 2`` and
    the rest (the samples are independent and identically distributed, so any fixed split will do)."""
    return slice(0, n // 2), slice(n // 2, n)


def mean_and_se(terms: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Column means of ``terms`` (n, m) and their standard errors, the standard deviation on
    ``n - ddof`` degrees of freedom over ``sqrt(n)`` (NaN without a degree of freedom)."""
    n = terms.shape[0]
    se = terms.std(0, ddof=ddof) / math.sqrt(n) if n > ddof else np.full(terms.shape[1:], math.nan)
    return terms.mean(0), se


def ratio_estimates(chain: np.ndarray, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ratios of consecutive means of ``chain`` (n, k + 1), per-sample terms of the means
    ``m_0 .. m_k`` (e.g. the :func:`controlled_terms` of ``H^0 .. H^L, H(X)``, ``rank`` the largest
    rank of their controls): ``r_l = m_l / m_{l-1}`` (k,) and their delta-method standard errors,
    the standard deviation of the linearized terms ``(u_l - r_l u_{l-1}) / m_{l-1}`` (on
    ``n - 1 - rank`` degrees of freedom, as :meth:`Estimate.of_controlled_terms`) over ``sqrt(n)``:
    the covariance of the two levels, estimated from the same samples, included."""
    m = chain.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = m[1:] / m[:-1]
        _, se = mean_and_se((chain[:, 1:] - ratio * chain[:, :-1]) / m[:-1], ddof=1 + rank)
    return ratio, se


def cross_fit_max(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> Estimate:
    """The cross-fitted value of the largest of ``m`` quantities, from their estimates and standard
    errors (two (m,) arrays) on each of two disjoint halves of the samples, ``first`` and ``second``.

    The arg max is chosen on one half and its value read on the other, both ways, and the two
    averaged: ``(b[argmax a] + a[argmax b]) / 2`` (sample splitting, Cox, "A note on data-splitting
    for the evaluation of significance levels", Biometrika 1975; both ways round, cross-fitting,
    Chernozhukov et al., "Double/debiased machine learning", Econometrics Journal 2018). Each term
    is an unbiased estimate of the true value of the quantity its half selected, with its own
    standard error, since the other half's samples are independent of the selection; so the
    average is unbiased for the mean true value of the selected ones, which is at most the true
    maximum: no winner's curse, at worst a downward bias where a half picks a quantity below the
    largest.

    Where both halves select the same quantity (a clear maximum) the estimate is that quantity's
    mean over all samples, whose standard error is the usual ``sqrt(se_a^2 + se_b^2) / 2``. Where
    they select different ones (close quantities), the two terms are dependent (each half's data
    both selects one term's quantity and estimates the other term's), and the standard error is the
    bound that holds whatever their correlation (Cauchy-Schwarz), ``(se_a + se_b) / 2``, that of a
    single split: on a model with 64 equal mappings the independent formula understated the spread
    by 7 to 16%. NaN where a half cannot estimate.
    """
    (a, se_a), (b, se_b) = first, second
    if not (np.isfinite(a).any() and np.isfinite(b).any()):
        return Estimate(math.nan, math.nan)
    pick_a, pick_b = int(np.nanargmax(a)), int(np.nanargmax(b))
    if pick_a == pick_b:
        return Estimate(float(b[pick_a] + a[pick_b]) / 2, math.hypot(float(se_b[pick_a]), float(se_a[pick_b])) / 2)
    return Estimate(float(b[pick_a] + a[pick_b]) / 2, float(se_b[pick_a] + se_a[pick_b]) / 2)


@dataclass
class MaxEstimate:
    """The largest of several Monte Carlo means (``C_max`` over the mappings, ``beta_max`` over the
    levels), with the selection bias of a maximum accounted for.

    The plain maximum of the estimates (``value``) is biased upward: ``E[max_R hat_R] >= max_R
    E[hat_R]`` (the maximum is convex), by about ``SE * sqrt(2 ln M)`` among ``M`` quantities of
    similar size (the winner's curse). Beside it:

    * ``split``, ``se``: the cross-fitted estimate of :func:`cross_fit_max` (arg max on one half of
      the samples, value on the other, both ways): unbiased for the selected quantities' true mean,
      so it does not grow with the number of quantities; below the true maximum where the halves
      select another quantity than the largest.
    * ``upper = max_R (hat_R + z SE_R)``: an upper confidence value of the true maximum at level
      ``Phi(z)`` (97.5%, :data:`CONFIDENCE_Z`), with no correction for the number of quantities:
      whenever the largest true value's own one-sided interval covers it, ``hat_{R*} + z SE_{R*}
      >= Delta_{R*} = max``, and so does the maximum over ``R`` of the intervals.
    * ``lower = split - z se``: a lower confidence value at the same level (``split`` estimates
      a value at most the maximum).

    ``[lower, upper]`` is a (conservative) 95% confidence interval for the true maximum. Measured
    over 200 seeds of 64 samples: on 64 equal mappings the plain maximum was 0.049 nats above the
    truth on average and the split estimate 0.002, and the lower and upper values covered it 97.5%
    and 100% of the time (``tests/test_entropy.py``). Like every standard error here they assume a
    near-normal mean: a gap close to its cap has a skewed integrand (rare low values), and on the
    pretrained ``ht_digits`` (``C_max`` is the root's gap, 2.54 nats of a cap of 2.60) the 64-sample
    lower value missed the 32,768-sample value in 10% of 300 seeds, the upper value in 0.3%.
    """

    value: float
    split: float
    se: float
    upper: float

    @property
    def lower(self) -> float:
        return self.split - CONFIDENCE_Z * self.se


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
        layer_terms: per layer ``l = 1..L``, the per-sample sums ``(n,)`` of the layer's
            Rao-Blackwellized gap integrands (mean ``C_l``): every mapping of a layer is estimated
            from the same samples, so ``C_l``'s standard error is theirs (:attr:`layer_gaps`).
        beta_se: delta-method standard errors of :attr:`betas` (NaN where those are).
        c_max_split, beta_max_split: the cross-fitted (sample-split) estimates of ``C_max`` and
            ``beta_max`` (:func:`cross_fit_max`, :class:`MaxEstimate`).
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
    layer_terms: list[np.ndarray] | None = None
    beta_se: list[float] | None = None
    c_max_split: Estimate | None = None
    beta_max_split: Estimate | None = None

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
        """``C_l``, ``l = 1..L``: the sum of the layer's Rao-Blackwellized gaps, with the standard
        error of the per-sample layer sums (:attr:`layer_terms`; NaN without them).

        The mappings of a layer are estimated from the same samples and are correlated (sibling
        sum nodes share their parent's channel ``Z_parent``), so the variance of their sum is not
        the sum of their variances: the standard error is that of the mean of the per-sample sums,
        ``sd_i(sum_R t_{R,i}) / sqrt(n)``, which includes every covariance (the gaps are plain
        Monte Carlo means, with no control variates, so this is the estimator's own SE)."""
        if self.layer_terms is None:
            return [Estimate(float(g.sum()), math.nan) for g in self.gaps]
        return [Estimate(float(g.sum()), Estimate.of(t).se) for g, t in zip(self.gaps, self.layer_terms)]

    @property
    def c_max(self) -> float:
        """The paper's ``C``: the largest gap of any mapping (the plain maximum of the estimates,
        biased upward; :attr:`c_max_estimate` gives its standard error and confidence values)."""
        return max([float(g.max()) for g in self.gaps] + [self.root_gap.value])

    @property
    def c_max_estimate(self) -> MaxEstimate:
        """``C_max`` (:attr:`c_max`), its cross-fitted estimate and standard error (:attr:`c_max_split`)
        and its upper confidence value ``max_R (Delta_R + z SE_R)`` over every mapping, root
        included (:class:`MaxEstimate`)."""
        upper = float(np.max([float((g + CONFIDENCE_Z * se).max()) for g, se in zip(self.gaps, self.gap_se)]
                             + [self.root_gap.value + CONFIDENCE_Z * self.root_gap.se]))  # NaN if an SE is
        split = self.c_max_split or Estimate(math.nan, math.nan)
        return MaxEstimate(self.c_max, split.value, split.se, upper)

    @property
    def beta_max_estimate(self) -> MaxEstimate:
        """``beta_max = max_l beta_l`` (top ratio included), its cross-fitted estimate and standard
        error (:attr:`beta_max_split`) and its upper confidence value ``max_l (beta_l + z SE_l)``
        (:class:`MaxEstimate`); all NaN for differential entropies."""
        if not self.discrete:
            return MaxEstimate(math.nan, math.nan, math.nan, math.nan)
        betas = self.betas
        ses = self.beta_se if self.beta_se is not None else [math.nan] * len(betas)
        split = self.beta_max_split or Estimate(math.nan, math.nan)
        upper = float(np.max(np.asarray(betas) + CONFIDENCE_Z * np.asarray(ses)))  # NaN if an SE is
        return MaxEstimate(max(betas), split.value, split.se, upper)

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

        ``C_max`` and ``beta_max`` enter at their upper confidence values (:class:`MaxEstimate`,
        97.5%): the bound of each inequality is a maximum of noisy estimates, and a check is only
        valid when the bound it compares with is one the true value stays under. The plain maximum
        is none (below the true one about half the time where one mapping dominates, far above it
        among many similar ones); the upper value is, so a negative slack is a violation beyond the
        sampling error of the bound, never one made by it. The slacks are the room the law leaves
        at that confidence (with the plain maxima they would be ``n_mappings * (C_max_upper -
        C_max)`` and ``beta_max_upper^(L+1) - beta_max^(L+1)`` smaller); ``H(X) - H^0`` is the
        one-pass estimate, whose own standard error (``entropy/H_X_se``) is set beside them.
        """
        return self._checks(self.c_max_estimate.upper, self.beta_max_estimate.upper)

    def _checks(self, c_max_upper: float, beta_max_upper: float) -> dict[str, float]:
        """:meth:`checks` given the upper values of ``C_max`` and ``beta_max`` (which :meth:`metrics`
        computes once for both)."""
        growth = self.h_x.value - self.levels[0].value
        total_cap = sum(float(c.sum()) for c in self.caps) + self.root_cap
        ratio = _ratio(self.h_x.value, self.levels[0].value)
        return {
            "additive_slack": self.num_mappings * c_max_upper - growth,
            "cap_slack": total_cap - growth,
            "ratio_slack": beta_max_upper ** (self.num_levels + 1) - ratio if self.discrete else math.nan,
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
            out[f"scaling/C{level}_se"] = gap.se
            out[f"scaling/n_mappings{level}"] = float(positions.numel())
        out["scaling/C_top"] = self.root_gap.value
        c_max = self.c_max_estimate
        out["scaling/C_max"] = c_max.value
        out["scaling/C_max_split"] = c_max.split
        out["scaling/C_max_se"] = c_max.se
        out["scaling/C_max_upper"] = c_max.upper
        out["scaling/cap_max"] = self.cap_max
        betas = self.betas
        for level, beta in enumerate(betas[:-1], start=1):
            out[f"scaling/beta{level}"] = beta
        out["scaling/beta_top"] = betas[-1]
        beta_max = self.beta_max_estimate
        out["scaling/beta_max"] = beta_max.value
        out["scaling/beta_max_split"] = beta_max.split
        out["scaling/beta_max_se"] = beta_max.se
        out["scaling/beta_max_upper"] = beta_max.upper
        checks = self._checks(c_max.upper, beta_max.upper)
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
        c_max = self.c_max_estimate
        interval = f"split {c_max.split:.3f}±{c_max.se:.3f}, 95% [{c_max.lower:.3f}, {c_max.upper:.3f}]"
        lines = [f"entropy chain (nats): {chain}",
                 f"C_max={c_max.value:.3f} ({interval})  cap_max={self.cap_max:.3f}  mappings={self.num_mappings}"]
        lines += self.notes
        return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b
