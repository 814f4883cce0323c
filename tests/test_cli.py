"""convac-train / convac-eval end to end: run folder, resume, eval, and CLI error messages."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from convac.cli.eval import evaluate
from convac.cli.train import train

SMALL = [
    "model.num_components=3",
    "model.channels=4",
    "data.batch_size=128",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "callbacks=model_checkpoint",  # the run folder essentials only (fast)
]


def run_train(output_dir, *overrides):
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={output_dir}", *SMALL, *overrides])
    return train(cfg)


def run_eval(*overrides):
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("eval", overrides=["trainer.enable_progress_bar=false", *overrides])
    return evaluate(cfg)


def csv_epochs(path, column):
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r[column]]


def test_train_writes_run_folder_and_resumes(tmp_path, capsys):
    run_train(tmp_path, "trainer.max_epochs=2")
    out = capsys.readouterr().out
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"run folder: {tmp_path.resolve()}" in out
    for path in (tmp_path / "config.yaml", tmp_path / "metrics.csv", last):
        assert path.is_file() and f"  {path.relative_to(tmp_path)} " in out
    assert len(list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    assert csv_epochs(tmp_path / "metrics.csv", "val/nll") == [0, 1]
    assert csv_epochs(tmp_path / "metrics.csv", "test/bpd") == [2]
    assert torch.load(last, weights_only=True)["epoch"] == 1

    metrics = run_train(tmp_path, "trainer.max_epochs=3", "ckpt_path=last", "test=false")
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert csv_epochs(tmp_path / "metrics.csv", "val/nll") == [0, 1, 2]  # earlier rows kept
    assert csv_epochs(tmp_path / "metrics.csv", "test/bpd") == [2]
    assert metrics["val/bpd"] > 0


def test_summary_lists_every_file_written(tmp_path, capsys):
    """The default callbacks (probe, pictures, checkpoints): every file of the run folder is named
    in the summary, with what it holds."""
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path}", *SMALL[:-1], "trainer.max_epochs=1",
                                          "callbacks.entropy_probe.num_samples=64"])
    run_train_cfg = train(cfg)
    assert run_train_cfg["test/nll"] > 0
    summary = capsys.readouterr().out.split("run folder:")[1]
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert {"entropy.csv", "entropy.png", "gaps.csv", "gaps.png", "samples.png", "inpaint.png", "hparams.yaml",
            "config.yaml", "metrics.csv", "checkpoints/last.ckpt"} <= set(files)
    listed = [line.split()[0] for line in summary.strip().splitlines()[1:]]
    assert sorted(listed) == files
    assert "the best checkpoint (val/loss=" in summary and "samples of the model" in summary


def test_eval_from_checkpoint(tmp_path):
    run_train(tmp_path / "run", "model=ht_classifier", "module.objective=discriminative",
              "trainer.max_epochs=1", "test=false")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = run_eval(f"ckpt={ckpt}", f"output_dir={tmp_path / 'eval'}")
    assert {"test/nll", "test/bpd", "test/acc", "test/acc_missing"} <= set(metrics)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["test/nll"] == pytest.approx(metrics["test/nll"])
    # an explicit data config gives the same split, hence the same numbers
    again = run_eval(f"ckpt={ckpt}", f"output_dir={tmp_path / 'eval2'}", "data=digits")
    assert again["test/nll"] == pytest.approx(metrics["test/nll"])
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_eval(f"ckpt={tmp_path / 'nope.ckpt'}", f"output_dir={tmp_path / 'eval3'}")


def cli(tmp_path, *overrides, module="convac.cli.train"):
    return subprocess.run(
        [sys.executable, "-m", module, f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.chanels=3", "model.chanels"),
        ("model.channels=abc", "model.channels"),
    ],
)
def test_wrong_override_exits_nonzero_naming_the_key(tmp_path, override, message):
    result = cli(tmp_path, override)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mnist_empty_root_names_the_expected_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(tmp_path, "data=mnist", f"data.root={empty}")
    assert result.returncode != 0
    text = result.stderr + result.stdout
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert name in text
    assert str(empty) in text
