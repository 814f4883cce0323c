"""The EntropyProbe callback and the entropy figure, on short real training runs."""
from __future__ import annotations

import csv
import math

import lightning as L
import pytest

from convac.callbacks import EntropyProbe
from convac.cli.plot import main as plot_main
from convac.data import DigitsDataModule
from convac.training import ConvACModule

MODEL = dict(in_shape=[1, 8, 8], leaf={"name": "categorical", "num_values": 17}, num_components=4, channels=4)


def fit(tmp_path, max_epochs, ckpt_path=None, **probe_kwargs):
    module = ConvACModule(model_name="ht", model_kwargs=MODEL, lr=0.05)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = L.Trainer(
        max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[EntropyProbe(num_samples=256, **probe_kwargs), checkpoint],
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer, module


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


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
    first = read_rows(tmp_path / "entropy.csv")
    fit(tmp_path, max_epochs=4, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    rows = read_rows(tmp_path / "entropy.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == first


def test_every_n_epochs_probes_the_last_epoch_too(tmp_path):
    fit(tmp_path, max_epochs=3, every_n_epochs=2)
    assert [int(r["epoch"]) for r in read_rows(tmp_path / "entropy.csv")] == [1, 2]


def test_plot_reports_a_missing_history(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_main([str(tmp_path)])
    assert exit_info.value.code == 2 and "entropy.csv" in capsys.readouterr().err
