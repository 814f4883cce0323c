"""Figures of a run: the entropy chain and the scaling-law quantities from ``entropy.csv``."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``entropy.csv`` (or ``metrics.csv``) as floats (empty cells dropped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no history at {path}: expected an entropy.csv written by the EntropyProbe callback")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _levels(row: dict[str, float]) -> int:
    return max(int(k[len("entropy/H"):]) for k in row if k.startswith("entropy/H") and k[len("entropy/H"):].isdigit())


def plot_entropy(csv_path: str | Path, png_path: str | Path) -> Path:
    """Three panels: ``H^l`` and ``H(X)`` per epoch with standard-error bands; ``C_l`` and
    ``beta_l`` per epoch; the last epoch's chain ``H^0 .. H(X)`` against level beside the
    scaling-law bounds ``H^0 + n_l C_max`` (additive, Thm 4) and ``H^0 beta_max^l`` (ratio, Thm 5)."""
    rows = read_history(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    num_levels = _levels(rows[-1])
    epochs = [r["epoch"] for r in rows]
    fig, (ax_h, ax_c, ax_chain) = plt.subplots(1, 3, figsize=(16, 4.5))

    series = [(f"H{l}", f"$H^{l}$") for l in range(num_levels + 1)] + [("H_X", "$H(X)$")]
    for key, label in series:
        mean = [r[f"entropy/{key}"] for r in rows]
        se = [r.get(f"entropy/{key}_se", 0.0) for r in rows]
        ax_h.plot(epochs, mean, marker=".", label=label)
        ax_h.fill_between(epochs, [m - 2 * s for m, s in zip(mean, se)], [m + 2 * s for m, s in zip(mean, se)], alpha=0.25)
    ax_h.set(xlabel="epoch", ylabel="entropy (nats)", title="level entropies $H(X|Z_l)$ (±2 SE)")
    ax_h.legend(fontsize=8)

    for l in range(1, num_levels + 1):
        ax_c.plot(epochs, [r[f"scaling/C{l}"] for r in rows], marker=".", label=f"$C_{l}$")
    ax_c.plot(epochs, [r["scaling/C_top"] for r in rows], marker=".", label="$C_{top}$")
    ax_c.set(xlabel="epoch", ylabel="gap (nats)", title=r"layer gaps $C_l$ and ratios $\beta_l$")
    ax_c.set_yscale("symlog", linthresh=1e-2)
    betas = [k for k in rows[-1] if k.startswith("scaling/beta") and k != "scaling/beta_max"]
    if all(math.isfinite(rows[-1][k]) for k in betas):
        ax_beta = ax_c.twinx()
        for k in betas:
            ax_beta.plot(epochs, [r[k] for r in rows], linestyle="--", label=k.split("/")[1])
        ax_beta.set_ylabel(r"$\beta$ (dashed)")
    ax_c.legend(fontsize=8, loc="upper left")

    last = rows[-1]
    chain = [last[f"entropy/H{l}"] for l in range(num_levels + 1)] + [last["entropy/H_X"]]
    steps = list(range(num_levels + 2))
    counts = [0.0] + [last.get(f"scaling/n_mappings{l}", math.nan) for l in range(1, num_levels + 1)] + [1.0]
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    ax_chain.plot(steps, chain, marker="o", label="measured chain")
    ax_chain.plot(steps, [chain[0] + n * last["scaling/C_max"] for n in cumulative], linestyle=":", label=r"$H^0 + n_{\leq l} C_{max}$")
    if math.isfinite(last["scaling/beta_max"]):
        ax_chain.plot(steps, [chain[0] * last["scaling/beta_max"] ** s for s in steps], linestyle="--", label=r"$H^0 \beta_{max}^l$")
    ax_chain.set_xticks(steps, [f"$H^{l}$" for l in range(num_levels + 1)] + ["$H(X)$"])
    ax_chain.set(ylabel="entropy (nats)", title=f"chain at epoch {int(last['epoch'])} and scaling-law bounds")
    ax_chain.set_ylim(min(chain) * 0.95 if min(chain) > 0 else None, max(chain) * 1.3 if max(chain) > 0 else None)
    ax_chain.legend(fontsize=8)

    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a run folder; returns the written paths."""
    run_dir = Path(run_dir)
    return [plot_entropy(run_dir / "entropy.csv", run_dir / "entropy.png")]
