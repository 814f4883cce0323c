"""The EntropyProbe callback and the entropy figure, on short real training runs."""
from __future__ import annotations

import csv
import math
import time
from collections import defaultdict

import lightning as L
import pytest
from lightning.pytorch.loggers.logger import Logger
from matplotlib.figure import Figure
from PIL import Image

from convac.callbacks import EntropyProbe
from convac.cli.plot import main as plot_main
from convac.data import DigitsDataModule
from convac.training import ConvACModule

MODEL = dict(in_shape=[1, 8, 8], leaf={"name": "categorical", "num_values": 17}, num_components=4, channels=4)


def fit(tmp_path, max_epochs, ckpt_path=None, logger=False, **probe_kwargs):
    module = ConvACModule(model_name="ht", model_kwargs=MODEL, lr=0.05)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = L.Trainer(
        max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, logger=logger,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[EntropyProbe(num_samples=256, **probe_kwargs), checkpoint],
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer, module


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def decodes_as_png(path) -> bool:
    with Image.open(path) as image:
        image.load()
        return image.format == "PNG" and min(image.size) > 100


def test_one_row_per_epoch_with_every_level_and_a_figure(tmp_path):
    trainer, module = fit(tmp_path, max_epochs=3)
    rows = read_rows(tmp_path / "entropy.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    levels = module.model.num_levels
    for row in rows:
        chain = [float(row[f"entropy/H{l}"]) for l in range(levels + 1)] + [float(row["entropy/H_X"])]
        assert all(math.isfinite(h) for h in chain)
        assert all(a <= b + 4 * float(row["entropy/H_X_se"]) for a, b in zip(chain, chain[1:]))
        assert math.isfinite(float(row["scaling/beta_max"])) and float(row["entropy/probe_seconds"]) > 0
    assert rows[0]["entropy/H_X"] != rows[-1]["entropy/H_X"]  # the model changed, the seed did not
    assert "entropy/H1" in trainer.callback_metrics
    assert (tmp_path / "entropy.png").stat().st_size > 10_000
    (tmp_path / "entropy.png").unlink()
    plot_main([str(tmp_path)])
    assert (tmp_path / "entropy.png").exists()


def test_history_survives_a_resume_without_duplicates(tmp_path):
    fit(tmp_path, max_epochs=2)
    first, first_gaps = read_rows(tmp_path / "entropy.csv"), read_rows(tmp_path / "gaps.csv")
    fit(tmp_path, max_epochs=4, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    rows, gaps = read_rows(tmp_path / "entropy.csv"), read_rows(tmp_path / "gaps.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == first
    per_epoch = len(first_gaps) // 2
    assert [int(r["epoch"]) for r in gaps] == [e for e in range(4) for _ in range(per_epoch)]
    assert gaps[: 2 * per_epoch] == first_gaps


def test_gaps_history_adds_up_to_the_telescoped_gain_every_epoch(tmp_path):
    _, module = fit(tmp_path, max_epochs=3)
    model = module.model
    entropy = {int(r["epoch"]): {k: float(v) for k, v in r.items()} for r in read_rows(tmp_path / "entropy.csv")}
    sums = defaultdict(lambda: defaultdict(float))
    cells = defaultdict(set)
    for r in read_rows(tmp_path / "gaps.csv"):
        epoch, level = int(r["epoch"]), int(r["level"])
        sums[epoch][level] += float(r["gap"])
        cells[(epoch, level)].add((int(r["row"]), int(r["column"])))
        assert float(r["se"]) >= 0
    levels = model.num_levels
    assert sorted(sums) == sorted(entropy) == [0, 1, 2]
    for epoch, row in entropy.items():
        assert sum(sums[epoch].values()) == pytest.approx(row["entropy/H_X_tele"] - row["entropy/H0"], rel=1e-9)
        for level in range(1, levels + 1):  # the sum nodes of layer l sit on grid l - 1
            assert sums[epoch][level] == pytest.approx(row[f"scaling/C{level}"], rel=1e-9)
            h, w = model.grids[level - 1]
            assert cells[(epoch, level)] == {(i, j) for i in range(h) for j in range(w)}
        assert sums[epoch][levels + 1] == pytest.approx(row["scaling/C_top"], rel=1e-9)  # the root
        assert cells[(epoch, levels + 1)] == {(0, 0)}
    assert decodes_as_png(tmp_path / "gaps.png") and decodes_as_png(tmp_path / "entropy.png")


class FigureRecorder(Logger):
    """A Lightning logger whose experiment takes figures (like TensorBoard's SummaryWriter)."""

    def __init__(self):
        super().__init__()
        self.metrics, self.figures = [], []

    name = "recorder"
    version = 0

    @property
    def experiment(self):
        return self

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.figures.append((tag, type(figure), global_step))

    def log_metrics(self, metrics, step=None):
        self.metrics.append(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_figures_go_to_loggers_that_take_figures(tmp_path):
    recorder = FigureRecorder()
    trainer, _ = fit(tmp_path, max_epochs=3, logger=recorder, figure_every_n_epochs=2)
    # epoch 1 (the 2nd) and the last one, 3 training steps an epoch
    assert recorder.figures == [(tag, Figure, step) for step in (6, 9) for tag in ("figures/entropy", "figures/gaps")]
    logged = [m for m in recorder.metrics if "entropy/H_X" in m]
    assert len(logged) == 3 and all(math.isfinite(m["scaling/C_max"]) for m in logged)


def test_tensorboard_gets_entropy_scalars_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    fit(tmp_path, max_epochs=2, logger=logger, figure_every_n_epochs=1)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"entropy/H_X", "entropy/H0", "scaling/C_max"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("entropy/H_X")) == 2
    assert {"figures/entropy", "figures/gaps"} <= set(events.Tags()["images"])
    assert len(events.Images("figures/gaps")) == 2


def test_every_n_epochs_probes_the_last_epoch_too(tmp_path):
    fit(tmp_path, max_epochs=3, every_n_epochs=2)
    assert [int(r["epoch"]) for r in read_rows(tmp_path / "entropy.csv")] == [1, 2]


def test_every_n_epochs_probes_an_early_stopped_last_epoch(tmp_path):
    """EarlyStopping after the probe in the callbacks (as in callbacks=[default,early_stopping]):
    it decides at the epoch's end, after the probe skipped the epoch, so the probe catches up at
    the end of the fit. A min_delta no epoch can beat stops the fit after epoch 1."""
    module = ConvACModule(model_name="ht", model_kwargs=MODEL, lr=0.05)
    stop = L.pytorch.callbacks.EarlyStopping(monitor="val/loss", patience=1, min_delta=1e9)
    trainer = L.Trainer(max_epochs=10, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, callbacks=[EntropyProbe(num_samples=64, every_n_epochs=5), stop])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert stop.stopped_epoch == 1
    rows = read_rows(tmp_path / "entropy.csv")
    assert [int(r["epoch"]) for r in rows] == [1] and int(rows[0]["step"]) == trainer.global_step == 4
    assert (tmp_path / "entropy.png").exists()


def test_plot_reports_a_missing_history(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_main([str(tmp_path)])
    assert exit_info.value.code == 2 and "entropy.csv" in capsys.readouterr().err


def test_probe_share_counts_the_whole_epoch(tmp_path):
    """The share's epoch is everything the trainer did since the probe last finished: here a
    callback after the probe that sleeps 0.25 s per epoch, which a share over training and
    validation alone (a few ms here) would leave out (share near 1 instead of below 0.2)."""
    import time

    class Slow(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            time.sleep(0.25)

    module = ConvACModule(model_name="ht", model_kwargs=MODEL, lr=0.05)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, callbacks=[EntropyProbe(num_samples=64, plot=False), Slow()])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    rows = read_rows(tmp_path / "entropy.csv")
    shares = [float(r["entropy/probe_share"]) for r in rows]
    seconds = [float(r["entropy/probe_seconds"]) for r in rows]
    assert all(0 < s < 1 for s in shares)
    for share, probe_seconds in zip(shares[1:], seconds[1:]):  # epoch 0's sleep falls into epoch 1
        assert share <= 2 * (probe_seconds + 0.01) / 0.25 and share < 0.2
