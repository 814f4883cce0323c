"""Figures of a run and of a sweep: the entropy chain and scaling-law quantities (``entropy.csv``),
the map of where information is created (``gaps.csv``) and the law across runs (``scaling.csv``).

Each figure has a ``*_figure`` function returning a matplotlib ``Figure`` (what the EntropyProbe
callback hands to TensorBoard) and a ``plot_*`` function writing it as PNG.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from convac.entropy.report import CONFIDENCE_Z
from convac.errors import InvalidValueError, MissingFileError


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``entropy.csv`` (or ``metrics.csv``) as floats (empty cells dropped)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no history at {path}: expected an entropy.csv written by the EntropyProbe callback")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def num_levels(row: dict[str, float]) -> int:
    """``L``, the highest level ``l`` with an ``entropy/H{l}`` column in a row of ``entropy.csv``."""
    return max(int(k[len("entropy/H"):]) for k in row if k.startswith("entropy/H") and k[len("entropy/H"):].isdigit())


def save(fig: Figure, png_path: str | Path) -> Path:
    """Write ``fig`` as PNG and close it."""
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_entropy(csv_path: str | Path, png_path: str | Path) -> Path:
    """:func:`entropy_figure` of the history ``csv_path`` (``entropy.csv``), written to ``png_path``."""
    rows = read_history(csv_path)
    if not rows:
        raise InvalidValueError(f"{csv_path} has no rows")
    return save(entropy_figure(rows), png_path)


def entropy_figure(rows: list[dict[str, float]]) -> Figure:
    """Three panels: ``H^l`` and ``H(X)`` per epoch with standard-error bands; ``C_l`` and
    ``beta_l`` per epoch; the last epoch's chain ``H^0 .. H(X)`` against level beside the
    scaling-law bounds ``H^0 + n_l C_max`` (additive, Thm 4) and ``H^0 beta_max^l`` (ratio, Thm 5).
    ``rows``: the rows of ``entropy.csv`` (:func:`read_history`)."""
    levels = num_levels(rows[-1])
    epochs = [r["epoch"] for r in rows]
    fig, (ax_h, ax_c, ax_chain) = plt.subplots(1, 3, figsize=(16, 4.5))

    series = [(f"H{l}", f"$H^{l}$") for l in range(levels + 1)] + [("H_X", "$H(X)$")]
    for key, label in series:
        mean = [r[f"entropy/{key}"] for r in rows]
        se = [r.get(f"entropy/{key}_se", 0.0) for r in rows]
        ax_h.plot(epochs, mean, marker=".", label=label)
        ax_h.fill_between(epochs, [m - 2 * s for m, s in zip(mean, se)], [m + 2 * s for m, s in zip(mean, se)], alpha=0.25)
    ax_h.set(xlabel="epoch", ylabel="entropy (nats)", title="level entropies $H(X|Z_l)$ (±2 SE)")
    ax_h.legend(fontsize=8)

    for l in range(1, levels + 1):
        ax_c.plot(epochs, [r[f"scaling/C{l}"] for r in rows], marker=".", label=f"$C_{l}$")
    ax_c.plot(epochs, [r["scaling/C_top"] for r in rows], marker=".", label="$C_{top}$")
    ax_c.set(xlabel="epoch", ylabel="gap (nats)", title=r"layer gaps $C_l$ and ratios $\beta_l$")
    ax_c.set_yscale("symlog", linthresh=1e-2)
    betas = [f"scaling/beta{l}" for l in range(1, levels + 1)] + ["scaling/beta_top"]  # not beta_max and its interval
    if all(math.isfinite(rows[-1][k]) for k in betas):
        ax_beta = ax_c.twinx()
        for k in betas:
            ax_beta.plot(epochs, [r[k] for r in rows], linestyle="--", label=k.split("/")[1])
        ax_beta.set_ylabel(r"$\beta$ (dashed)")
    ax_c.legend(fontsize=8, loc="upper left")

    last = rows[-1]
    chain = [last[f"entropy/H{l}"] for l in range(levels + 1)] + [last["entropy/H_X"]]
    steps = list(range(levels + 2))
    counts = [0.0] + [last.get(f"scaling/n_mappings{l}", math.nan) for l in range(1, levels + 1)] + [1.0]
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    ax_chain.plot(steps, chain, marker="o", label="measured chain")
    ax_chain.plot(steps, [chain[0] + n * last["scaling/C_max"] for n in cumulative], linestyle=":", label=r"$H^0 + n_{\leq l} C_{max}$")
    if math.isfinite(last["scaling/beta_max"]):
        ax_chain.plot(steps, [chain[0] * last["scaling/beta_max"] ** s for s in steps], linestyle="--", label=r"$H^0 \beta_{max}^l$")
    ax_chain.set_xticks(steps, [f"$H^{l}$" for l in range(levels + 1)] + ["$H(X)$"])
    ax_chain.set(ylabel="entropy (nats)", title=f"chain at epoch {int(last['epoch'])} and scaling-law bounds")
    ax_chain.set_ylim(min(chain) * 0.95 if min(chain) > 0 else None, max(chain) * 1.3 if max(chain) > 0 else None)
    ax_chain.legend(fontsize=8)

    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ where information is created
def read_gaps(path: str | Path) -> dict[int, list[np.ndarray]]:
    """``gaps.csv`` (long format: epoch, level, row, column, gap, se) as ``{epoch: [gap grids]}``,
    one ``(H_{l-1}, W_{l-1})`` array per level ``l = 1..L`` and the root's ``(1, 1)`` last (nats)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no gap history at {path}: expected a gaps.csv written by the EntropyProbe callback")
    cells: dict[int, dict[int, list[tuple[int, int, float]]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            cells[int(row["epoch"])][int(row["level"])].append((int(row["row"]), int(row["column"]), float(row["gap"])))
    if not cells:
        raise InvalidValueError(f"{path} has no rows")
    maps = {}
    for epoch, levels in cells.items():
        maps[epoch] = []
        for level in sorted(levels):
            r, c, gap = (np.array(v) for v in zip(*levels[level]))
            grid = np.full((r.max() + 1, c.max() + 1), np.nan)
            grid[r, c] = gap
            maps[epoch].append(grid)
    return dict(sorted(maps.items()))


def plot_gaps(csv_path: str | Path, png_path: str | Path) -> Path:
    """:func:`gaps_figure` of ``csv_path`` (``gaps.csv``), written to ``png_path``."""
    return save(gaps_figure(read_gaps(csv_path)), png_path)


def gaps_figure(maps: dict[int, list[np.ndarray]], num_epochs: int = 4) -> Figure:
    """Where information is created: the gap ``Delta_R`` of every mapping as one heatmap per level
    over its grid (columns: layers ``1..L`` then the root), for up to ``num_epochs`` epochs spread
    over the history (rows, first and last included). Each level has one colour scale across the
    epochs, so a row-to-row change is the model learning. ``maps``: :func:`read_gaps`."""
    epochs = list(maps)
    picks = np.unique(np.linspace(0, len(epochs) - 1, min(num_epochs, len(epochs))).round().astype(int))
    shown = [epochs[i] for i in picks]
    num_maps = len(maps[shown[-1]])
    fig, axes = plt.subplots(len(shown), num_maps, squeeze=False, layout="constrained",
                             figsize=(2.3 * num_maps + 0.6, 2.2 * len(shown) + 0.9))
    for col in range(num_maps):
        grids = [maps[e][col] for e in shown]
        vmin, vmax = min(0.0, min(np.nanmin(g) for g in grids)), max(np.nanmax(g) for g in grids)
        vmax = vmax if vmax > vmin else vmin + 1e-9
        for row, (epoch, grid) in enumerate(zip(shown, grids)):
            ax = axes[row, col]
            flat = max(grid.shape) > 4 * min(grid.shape)  # a sequence (or a few repetitions of one)
            image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto" if flat else "equal")
            if grid.size <= 16:
                for (r, c), value in np.ndenumerate(grid):
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > (vmin + vmax) / 2 else "white")
            ax.set_xticks([])
            ax.set_yticks([])
            name = "root" if col == num_maps - 1 else f"layer {col + 1} ({grid.shape[0]}x{grid.shape[1]})"
            ax.set_title(f"{name}\nsum {np.nansum(grid):.2f}" if row == 0 else f"sum {np.nansum(grid):.2f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"epoch {epoch}")
        fig.colorbar(image, ax=axes[:, col], location="bottom", shrink=0.9, label="gap (nats)")
    fig.suptitle(r"mapping gaps $\Delta_R = I(X_S; A_R \mid Z_{parent})$ per level; each row adds up to $H(X) - H^0$", fontsize=10)
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a run folder: ``entropy.png``, and ``gaps.png`` where there is a
    ``gaps.csv``; returns the written paths."""
    run_dir = Path(run_dir)
    paths = [plot_entropy(run_dir / "entropy.csv", run_dir / "entropy.png")]
    if (run_dir / "gaps.csv").exists():
        paths.append(plot_gaps(run_dir / "gaps.csv", run_dir / "gaps.png"))
    return paths


# ------------------------------------------------------------------ the law across a sweep
def plot_scaling(rows: list[dict], fits: dict, png_path: str | Path) -> Path:
    """:func:`scaling_figure`, written to ``png_path``."""
    return save(scaling_figure(rows, fits), png_path)


def scaling_figure(rows: list[dict], fits: dict) -> Figure:
    """The scaling law across the runs of a sweep (``rows``: :func:`convac.sweep.scaling_table`;
    ``fits``: :func:`convac.sweep.fit_laws`), one colour per model kind and width:

    1. ``H(X) - H^0`` against ``n_mappings`` (filled) with each run's bounds ``n_mappings * C_max``
       (Thm 4, down triangles; ``gain + additive_slack``, so at ``C_max``'s upper value where the run
       logged one) and ``sum_R cap_R`` (up triangles), and the fitted gain per mapping;
    2. ``log(H(X) / H^0)`` against ``L + 1`` with each run's ``(L + 1) log beta_max`` (Thm 5, at
       ``beta_max``'s upper value where there is one) and the fitted ``log beta``;
    3. ``C_max`` (filled, with its 95% interval ``[C_max_split - 1.96 C_max_se, C_max_upper]``
       where the run logged one) and the mean gap per mapping ``(H(X) - H^0) / n_mappings`` (open)
       against the depth ``L``.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["width"])].append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_add, ax_ratio, ax_depth) = plt.subplots(1, 3, figsize=(16, 4.8))
    for i, ((model, width), group) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))):
        color = colors[i % len(colors)]
        label = f"{model} K={width:g}" if math.isfinite(width) else model
        group = sorted(group, key=lambda r: r["n_mappings"])
        n = [r["n_mappings"] for r in group]
        ax_add.plot(n, [r["gain"] for r in group], "o-", color=color, label=label)
        ax_add.plot(n, [r["gain"] + r["additive_slack"] for r in group], "v", color=color, mfc="none")
        ax_add.plot(n, [r["cap_sum"] for r in group], "^", color=color, mfc="none")
        depth = [r["L"] + 1 for r in group]
        ax_ratio.plot(depth, [_log_ratio(r) for r in group], "o", color=color, label=label)
        ax_ratio.plot(depth, [(r["L"] + 1) * math.log(b) if (b := _upper(r, "beta_max")) > 0 else math.nan for r in group],
                      "v", color=color, mfc="none")
        c_max = [r["C_max"] for r in group]
        lower = [r.get("C_max_split", math.nan) - CONFIDENCE_Z * r.get("C_max_se", math.nan) for r in group]
        upper = [r.get("C_max_upper", math.nan) for r in group]
        below, above = [_bar(c - lo) for c, lo in zip(c_max, lower)], [_bar(up - c) for c, up in zip(c_max, upper)]
        ax_depth.errorbar([r["L"] for r in group], c_max, yerr=[below, above], fmt="o", color=color, capsize=3, label=label)
        ax_depth.plot([r["L"] for r in group], [r["gain_per_mapping"] for r in group], "s", color=color, mfc="none")

    additive = fits["additive"]
    span = np.geomspace(min(r["n_mappings"] for r in rows), max(r["n_mappings"] for r in rows), 50)
    ax_add.plot(span, additive.slope * span, "k--", lw=1, label=f"fit: {additive.slope:.3g} nats/mapping")
    if math.isfinite(additive.ci_low):
        ax_add.fill_between(span, additive.ci_low * span, additive.ci_high * span, color="k", alpha=0.1)
    ax_add.plot([], [], "kv", mfc="none", label=r"bound $n\,C_{max}$ (upper value)")
    ax_add.plot([], [], "k^", mfc="none", label=r"bound $\sum_R cap_R$")
    ax_add.set(xscale="log", yscale="log", xlabel="mappings (sum nodes + root)", ylabel="$H(X) - H^0$ (nats)",
               title="additive law (Thm 4)")
    for axis in (ax_add.xaxis, ax_add.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax_add.legend(fontsize=7)

    ratio = fits["ratio"]
    if ratio is not None:
        depths = np.arange(0, max(r["L"] for r in rows) + 2)
        ax_ratio.plot(depths, ratio.slope * depths, "k--", lw=1, label=rf"fit: $\beta$ = {math.exp(ratio.slope):.3g} per level")
        if math.isfinite(ratio.ci_low):
            ax_ratio.fill_between(depths, ratio.ci_low * depths, ratio.ci_high * depths, color="k", alpha=0.1)
    ax_ratio.plot([], [], "kv", mfc="none", label=r"bound $(L+1) \log \beta_{max}$ (upper value)")
    ax_ratio.set(xlabel="L + 1", ylabel="$\\log(H(X) / H^0)$", title="ratio law (Thm 5)")
    ax_ratio.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_ratio.legend(fontsize=7)

    ax_depth.plot([], [], "ko", label="$C_{max}$ (95% interval)")
    ax_depth.plot([], [], "ks", mfc="none", label="mean gap per mapping")
    ax_depth.set(xlabel="depth L (fusion layers)", ylabel="nats", title="gap per mapping against depth")
    ax_depth.set_ylim(bottom=0)
    ax_depth.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_depth.legend(fontsize=7)
    datasets = ", ".join(sorted({str(r["data"]) for r in rows}))
    fig.suptitle(f"the scaling law across {len(rows)} runs ({datasets})", fontsize=11)
    fig.tight_layout()
    return fig


def _upper(row: dict, name: str) -> float:
    """A row's upper confidence value of ``name`` (``C_max`` or ``beta_max``), or the plain value
    for runs logged without one."""
    upper = row.get(f"{name}_upper", math.nan)
    return upper if math.isfinite(upper) else row[name]


def _bar(length: float) -> float:
    """An error bar's length, 0 where it is unknown (NaN: a run logged without the interval)."""
    return max(length, 0.0) if math.isfinite(length) else 0.0


def _log_ratio(row: dict) -> float:
    return math.log(row["H_X"] / row["H0"]) if row["H0"] > 0 and row["H_X"] > 0 else math.nan
