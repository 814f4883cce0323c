"""Sweeps: a Hydra multirun through the CLI aggregated by ``convac-plot --sweep``, and the law fits."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from convac.cli.plot import main as plot_main
from convac.entropy.law import fit_slope
from convac.plotting import scaling_figure
from convac.sweep import COLUMNS, fit_laws, scaling_table, summary

TINY = [
    "model.num_components=3",
    "data.batch_size=128",
    "data.resize=true",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks.entropy_probe.num_samples=64",
    "~callbacks.model_summary",
    "threads=1",
]


def test_two_run_multirun_aggregates_to_two_finite_rows(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "convac.cli.train", "-m", f"hydra.sweep.dir={sweep}", *TINY,
         "model.channels=4", "data.in_shape=[1,4,4],[1,8,8]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for run in ("0", "1"):
        with Image.open(sweep / run / "gaps.png") as image:
            image.load()
            assert image.format == "PNG"

    (sweep / "2" / ".hydra").mkdir(parents=True)  # a run that failed before its first epoch
    plot_main(["--sweep", str(sweep)])
    out = capsys.readouterr().out
    assert "gain per mapping" in out and str(sweep / "scaling.png") in out
    assert f"skipped {sweep / '2'} (no entropy.csv)" in out
    with (sweep / "scaling.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and tuple(rows[0]) == COLUMNS
    assert [r["folder"] for r in rows] == ["0", "1"]
    assert "data.in_shape=[1,4,4]" in rows[0]["overrides"] and rows[0]["model"] == "ht"
    numeric = [c for c in COLUMNS if c not in ("folder", "overrides", "model", "data")]
    assert all(math.isfinite(float(r[c])) for r in rows for c in numeric)
    # 4x4 and 8x8 inputs: quad-tree HTs with L = 2, 3 and N + N/4 + ... + 1 mappings
    assert [(int(r["L"]), int(float(r["N"])), int(float(r["n_mappings"]))) for r in rows] == [(2, 16, 21), (3, 64, 85)]
    fitted = json.loads((sweep / "scaling.json").read_text())
    additive = fitted["fits"]["all"]["additive"]
    assert fitted["num_runs"] == 2 and additive["ci_low"] <= additive["slope"] <= additive["ci_high"]
    with Image.open(sweep / "scaling.png") as image:
        image.load()
        assert image.format == "PNG" and image.size[0] > 1000


def test_fit_recovers_a_known_slope_and_interval():
    rng = np.random.default_rng(0)
    slope, sigma, runs = 0.3, 2.0, 40
    x = rng.uniform(10, 100, runs)
    se = sigma / np.sqrt((x * x).sum())  # the least-squares slope's standard error
    fit = fit_slope(x, slope * x + sigma * rng.standard_normal(runs), num_boot=4000)
    assert abs(fit.slope - slope) < 4 * se
    assert fit.ci_high - fit.ci_low == pytest.approx(2 * 1.96 * se, rel=0.3)
    # the 95% interval covers the true slope about 95% of the time (200 tables; SE of the rate 1.5%)
    covered = 0
    for seed in range(200):
        y = slope * x + sigma * np.random.default_rng(100 + seed).standard_normal(runs)
        fit = fit_slope(x, y, num_boot=500, seed=seed)
        covered += fit.ci_low <= slope <= fit.ci_high
    assert 0.88 <= covered / 200 <= 0.99
    # an exact law is recovered exactly, with an interval of zero width
    exact = fit_slope([3, 7, 15], [0.6, 1.4, 3.0])
    assert exact.slope == pytest.approx(0.2) and exact.ci_low == pytest.approx(0.2) and exact.ci_high == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positive x"):
        fit_slope([0, 1], [0, 1])


def test_fit_laws_reads_both_laws_off_a_table():
    beta, gain = 1.1, 0.25
    rows = [{"n_mappings": 2 * 4**level - 1, "L": level, "H0": 10.0 * level, "beta_max": 1.2,
             "gain": gain * (2 * 4**level - 1), "H_X": 10.0 * level * beta ** (level + 1)} for level in (1, 2, 3)]
    rows.append({**rows[0], "beta_max": math.nan})  # differential entropies: no ratio law
    fits = fit_laws(rows, num_boot=200)
    assert fits["additive"].slope == pytest.approx(gain) and fits["additive"].num_runs == 4
    assert math.exp(fits["ratio"].slope) == pytest.approx(beta) and fits["ratio"].num_runs == 3
    assert fit_laws(rows[3:])["ratio"] is None


def test_plot_modes_exclude_each_other_and_report_an_empty_sweep(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_main(["--sweep", str(tmp_path)])
    assert exit_info.value.code == 2 and "no runs under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        plot_main([str(tmp_path), "--sweep", str(tmp_path)])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_sweep_rows_carry_the_interval_of_c_max_and_beta_max_and_read_runs_without_it(tmp_path):
    """Each run's C_max and beta_max come with their cross-fitted estimates, SEs and upper values,
    into scaling.csv, the summary and the figure's error bars; a run whose entropy.csv lacks
    those columns still reads, with NaN in their place."""
    base = {"epoch": 0, "entropy/H0": 10.0, "entropy/H1": 12.0, "entropy/H_X": 13.0, "entropy/H_X_se": 0.1,
            "scaling/n_mappings1": 4, "scaling/C_max": 1.0, "scaling/cap_max": 1.5, "scaling/cap_slack": 2.0,
            "scaling/beta_max": 1.2, "scaling/additive_slack": 2.5, "scaling/ratio_slack": 0.4}
    interval = {"scaling/C_max_split": 0.9, "scaling/C_max_se": 0.05, "scaling/C_max_upper": 1.1,
                "scaling/beta_max_split": 1.19, "scaling/beta_max_se": 0.01, "scaling/beta_max_upper": 1.22}
    for name, row in (("new", {**base, **interval}), ("old", base)):
        (tmp_path / name).mkdir()
        with (tmp_path / name / "entropy.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)
    new, old = scaling_table(tmp_path)
    assert (new["folder"], old["folder"]) == ("new", "old")
    assert {k: new[k] for k in ("C_max", "C_max_split", "C_max_se", "C_max_upper")} == {
        "C_max": 1.0, "C_max_split": 0.9, "C_max_se": 0.05, "C_max_upper": 1.1}
    assert (new["beta_max_split"], new["beta_max_se"], new["beta_max_upper"]) == (1.19, 0.01, 1.22)
    assert all(math.isnan(old[f"{q}_max_{k}"]) for q in ("C", "beta") for k in ("split", "se", "upper"))
    assert old["C_max"] == 1.0 and set(COLUMNS) == set(new) == set(old)
    fits = fit_laws([new, old], num_boot=50)
    text = summary([new, old], {"all": fits})
    assert "1.100" in text and "1.220" in text and "nan" in text
    figure = scaling_figure([new, old], fits)
    bars = [c for c in figure.axes[2].containers if c.has_yerr]
    assert len(bars) == 1  # one model kind: one error-bar series, [0.9 - 1.96 * 0.05, 1.1] and none
    spans = sorted(tuple(round(float(y), 6) for _, y in segment) for segment in bars[0].lines[2][0].get_segments())
    assert spans == [(0.802, 1.1), (1.0, 1.0)]
    plt.close(figure)
