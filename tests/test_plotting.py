"""Figures from the run histories: the gap maps of non-square grids, read back and drawn."""
from __future__ import annotations

import numpy as np
from PIL import Image

from convac import Bernoulli, HTConvAC
from convac.entropy import probe
from convac.plotting import plot_gaps, read_gaps
from convac.training.atomic import CsvHistory


def test_gap_maps_of_a_non_square_grid_round_trip_and_draw(tmp_path):
    model = HTConvAC((1, 2, 6), Bernoulli(), num_components=2, channels=3)  # grids 2x6, 1x3, 1x2, 1x1
    path = tmp_path / "gaps.csv"
    reports = [probe(model, num_samples=32, seed=seed) for seed in (0, 1)]
    history = CsvHistory(path, "epoch")
    for epoch, report in enumerate(reports):
        history.write({"epoch": epoch, **r} for r in report.gap_rows())
    maps = read_gaps(path)
    assert list(maps) == [0, 1]
    for epoch, report in enumerate(reports):
        assert [m.shape for m in maps[epoch]] == [(2, 6), (1, 3), (1, 2), (1, 1)]
        for grid, gap in zip(maps[epoch], report.gaps):
            np.testing.assert_array_equal(grid, gap.numpy())
        assert maps[epoch][-1][0, 0] == report.root_gap.value
    plot_gaps(path, tmp_path / "gaps.png")
    with Image.open(tmp_path / "gaps.png") as image:
        image.load()
        assert image.format == "PNG"
