"""A sweep of ``convac-train`` runs (a Hydra multirun folder) as one table, the fitted scaling laws and
their figure: what ``convac-plot --sweep DIR`` writes into ``DIR``.

* ``scaling.csv``: one row per run (:data:`COLUMNS`), from the run's last ``entropy.csv`` row, its
  ``config.yaml``, ``.hydra/overrides.yaml`` and ``metrics.csv`` (test NLL);
* ``scaling.json``: the laws fitted over the runs (:func:`fit_laws`), all runs and per model kind;
* ``scaling.png``: :func:`convac.plotting.scaling_figure`.

Entropies are in nats (DESIGN section 2); ``n_mappings`` counts every sum node and the root.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from convac.entropy.law import SlopeFit, fit_slope
from convac.errors import InvalidValueError, MissingFileError
from convac.plotting import num_levels, plot_scaling, read_history

# One row per run. folder: relative to the sweep folder; overrides: the run's command-line
# overrides; D: variables; N: level-0 positions; L: fusion layers; width: the largest K_l;
# gain: H(X) - H^0; cap_sum: sum of every mapping's cap; C_max and beta_max: the plain maxima of the
# estimates (biased upward), with their cross-fitted estimates, standard errors and 97.5% upper
# confidence values (*_split, *_se, *_upper; EntropyReport.c_max_estimate; NaN for runs whose
# entropy.csv lacks them); slacks: scaling/*_slack (>= 0 when the bound holds, with the upper values
# of C_max and beta_max); test_nll in nats per example (NaN when the run was not tested).
COLUMNS = (
    "folder", "overrides", "model", "data", "D", "N", "L", "width", "n_mappings", "epochs",
    "H0", "H_X", "H_X_se", "gain", "gain_per_mapping", "C_max", "C_max_split", "C_max_se", "C_max_upper",
    "cap_max", "cap_sum", "beta_max", "beta_max_split", "beta_max_se", "beta_max_upper",
    "additive_slack", "cap_slack", "ratio_slack", "test_nll", "test_bpd",
)
# the interval columns of C_max and beta_max, read from entropy.csv where it has them
_INTERVALS = tuple(f"{q}_max_{k}" for q in ("C", "beta") for k in ("split", "se", "upper"))
HISTORY = "entropy.csv"


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Every run folder under ``sweep_dir`` (at any depth: one multirun, or several side by side),
    i.e. every folder holding an ``entropy.csv``, in natural order (``2`` before ``10``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingFileError(f"--sweep {sweep_dir}: no such folder")
    runs = sorted((p.parent for p in sweep_dir.rglob(HISTORY)), key=lambda p: _natural(p.relative_to(sweep_dir)))
    if not runs:
        raise MissingFileError(f"no runs under {sweep_dir}: expected run folders holding {HISTORY} "
                                f"(convac-train -m ... with the entropy probe on)")
    return runs


def incomplete_runs(sweep_dir: str | Path) -> list[Path]:
    """Run folders under ``sweep_dir`` (holding Hydra's ``.hydra``) without an ``entropy.csv``:
    runs that failed, are still running, or ran without the probe."""
    sweep_dir = Path(sweep_dir)
    return sorted((p.parent for p in sweep_dir.rglob(".hydra") if not (p.parent / HISTORY).exists()),
                  key=lambda p: _natural(p.relative_to(sweep_dir)))


def _natural(path: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def run_row(run_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """The :data:`COLUMNS` of one run folder (its last probed epoch)."""
    rows = read_history(run_dir / HISTORY)
    if not rows:
        raise InvalidValueError(f"{run_dir / HISTORY} has no rows")
    last = rows[-1]
    levels = num_levels(last)
    counts = [last[f"scaling/n_mappings{l}"] for l in range(1, levels + 1)]
    n_mappings = sum(counts) + 1
    gain = last["entropy/H_X"] - last["entropy/H0"]
    config = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else OmegaConf.create()
    overrides = run_dir / ".hydra" / "overrides.yaml"
    test = _last_logged(run_dir / "metrics.csv", ("test/nll", "test/bpd"))
    return {
        "folder": str(run_dir.relative_to(sweep_dir)),
        "overrides": " ".join(OmegaConf.load(overrides)) if overrides.exists() else "",
        "model": OmegaConf.select(config, "model.name", default=""),
        "data": OmegaConf.select(config, "data.name", default=""),
        "D": math.prod(OmegaConf.select(config, "data.in_shape", default=[math.nan])),
        "N": counts[0],
        "L": levels,
        "width": _width(config),
        "n_mappings": n_mappings,
        "epochs": int(last["epoch"]) + 1,
        "H0": last["entropy/H0"],
        "H_X": last["entropy/H_X"],
        "H_X_se": last["entropy/H_X_se"],
        "gain": gain,
        "gain_per_mapping": gain / n_mappings,
        "C_max": last["scaling/C_max"],
        "cap_max": last["scaling/cap_max"],
        "cap_sum": gain + last["scaling/cap_slack"],
        "beta_max": last["scaling/beta_max"],
        **{name: last.get(f"scaling/{name}", math.nan) for name in _INTERVALS},
        "additive_slack": last["scaling/additive_slack"],
        "cap_slack": last["scaling/cap_slack"],
        "ratio_slack": last["scaling/ratio_slack"],
        "test_nll": test["test/nll"],
        "test_bpd": test["test/bpd"],
    }


def _width(config) -> float:
    """The largest ``K_l`` of a run's model: ``rank`` (CP) or ``channels`` (an int or a list)."""
    width = OmegaConf.select(config, "model.rank", default=None) or OmegaConf.select(config, "model.channels", default=None)
    if width is None:
        return math.nan
    return float(max(width) if OmegaConf.is_list(width) else width)


def _last_logged(path: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each of ``keys`` in a ``metrics.csv`` (NaN if never logged)."""
    found = dict.fromkeys(keys, math.nan)
    for row in read_history(path) if path.exists() else []:
        found.update({k: row[k] for k in keys if k in row})
    return found


def scaling_table(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One :func:`run_row` per run of :func:`find_runs`."""
    sweep_dir = Path(sweep_dir)
    return [run_row(run, sweep_dir) for run in find_runs(sweep_dir)]


def fit_laws(rows: list[dict[str, Any]], num_boot: int = 2000, seed: int = 0) -> dict[str, SlopeFit | None]:
    """The laws over ``rows`` (:func:`scaling_table`), each by :func:`convac.entropy.law.fit_slope`:

    * ``additive``: ``H(X) - H^0 ~ c * n_mappings``, ``c`` the gain per mapping (nats);
    * ``ratio``: ``log(H(X) / H^0) ~ (L + 1) * log beta``, over the runs whose entropies are
      discrete (positive ``H^0``, finite ``beta_max``); None when there is none.
    """
    n = np.array([r["n_mappings"] for r in rows], dtype=float)
    gain = np.array([r["gain"] for r in rows], dtype=float)
    fits: dict[str, SlopeFit | None] = {"additive": fit_slope(n, gain, num_boot=num_boot, seed=seed)}
    discrete = [r for r in rows if r["H0"] > 0 and math.isfinite(r["beta_max"])]
    fits["ratio"] = fit_slope([r["L"] + 1 for r in discrete], [math.log(r["H_X"] / r["H0"]) for r in discrete],
                              num_boot=num_boot, seed=seed) if discrete else None
    return fits


def write_sweep(sweep_dir: str | Path, num_boot: int = 2000, seed: int = 0) -> tuple[list[Path], str]:
    """Write ``scaling.csv``, ``scaling.json`` and ``scaling.png`` into ``sweep_dir``; returns
    their paths and a summary for the terminal (the table's key columns and the fitted laws)."""

    sweep_dir = Path(sweep_dir)
    rows = scaling_table(sweep_dir)
    fits = {"all": fit_laws(rows, num_boot, seed)}
    kinds = sorted({r["model"] for r in rows})
    if len(kinds) > 1:
        fits.update({kind: fit_laws([r for r in rows if r["model"] == kind], num_boot, seed) for kind in kinds})

    table = sweep_dir / "scaling.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    fitted = sweep_dir / "scaling.json"
    fitted.write_text(json.dumps({
        "sweep": str(sweep_dir),
        "num_runs": len(rows),
        "laws": {
            "additive": "H(X) - H^0 ~ slope * n_mappings: slope = gain per mapping (nats)",
            "ratio": "log(H(X) / H^0) ~ slope * (L + 1): slope = log beta, beta = exp(slope)",
            "fit": "least squares through the origin; percentile bootstrap interval over runs",
        },
        "fits": {group: {law: _finite_or_none(fit.as_dict()) if fit else None for law, fit in group_fits.items()}
                 for group, group_fits in fits.items()},
    }, indent=2) + "\n")
    figure = plot_scaling(rows, fits["all"], sweep_dir / "scaling.png")
    skipped = [f"skipped {run} (no {HISTORY})" for run in incomplete_runs(sweep_dir)]
    return [table, fitted, figure], "\n".join([summary(rows, fits), *skipped])


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    """NaN -> None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def summary(rows: list[dict[str, Any]], fits: dict[str, dict[str, SlopeFit | None]]) -> str:
    """The key columns of the table and the fitted laws, as text."""
    lines = [f"{'folder':<16} {'model':<6} {'L':>2} {'N':>5} {'K':>4} {'mappings':>8} {'H^0':>8} {'H(X)':>8} "
             f"{'gain':>8} {'gain/map':>8} {'C_max':>6} {'(upper)':>7} {'beta_max':>8} {'(upper)':>7} {'test NLL':>9}"]
    for r in rows:
        lines.append(f"{r['folder']:<16} {r['model']:<6} {r['L']:>2} {r['N']:>5.0f} {r['width']:>4.0f} {r['n_mappings']:>8.0f} "
                     f"{r['H0']:>8.2f} {r['H_X']:>8.2f} {r['gain']:>8.2f} {r['gain_per_mapping']:>8.4f} "
                     f"{r['C_max']:>6.3f} {r.get('C_max_upper', math.nan):>7.3f} "
                     f"{r['beta_max']:>8.3f} {r.get('beta_max_upper', math.nan):>7.3f} {r['test_nll']:>9.2f}")
    for group, laws in fits.items():
        lines.append(f"{group}: gain per mapping (nats) {laws['additive']}")
        if laws["ratio"] is not None:
            beta = laws["ratio"]
            lines.append(f"{group}: log beta per level {beta}; beta = {math.exp(beta.slope):.4g} "
                         f"[{math.exp(beta.ci_low):.4g}, {math.exp(beta.ci_high):.4g}]")
    return "\n".join(lines)
