"""Reliability: kill and resume, DDP on CPU, bad inputs through the CLI, non-finite guard.

The CLI cases run ``convac-train`` / ``convac-eval`` as subprocesses (``python -m``), as a user
would; every bad input must exit non-zero with one line naming what was expected and what was
found, and leave no run-folder files behind.
"""
from __future__ import annotations

import csv
import gzip
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from convac.cli.train import main as train_main
from convac.data import create_datamodule
from convac.training import ConvACModule, FiniteGuard, NonFiniteError

TINY = [
    "threads=1",
    "model.num_components=3",
    "model.channels=4",
    "trainer.enable_progress_bar=false",
    "callbacks.entropy_probe.num_samples=256",
    "callbacks.entropy_probe.plot=false",
    "~callbacks.model_summary",
]
RUN_FILES = ("config.yaml", "metrics.csv", "entropy.csv", "hparams.yaml", "checkpoints")


def command(run_dir: Path, *overrides: str, module: str = "convac.cli.train") -> list[str]:
    return [sys.executable, "-m", module, f"hydra.run.dir={run_dir}", *overrides]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ kill and resume
def last_logged_step(path: Path) -> int:
    """The step of the last row of a ``metrics.csv`` being written (-1 before its first row)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return int(lines[-1].split(",")[lines[0].split(",").index("step")]) if len(lines) > 1 else -1


def test_sigkill_mid_epoch_then_resume_continues_without_losing_rows(tmp_path):
    run = tmp_path / "run"
    args = command(run, *TINY, "data.batch_size=8", "trainer.max_epochs=3", "trainer.limit_val_batches=2",
                   "trainer.log_every_n_steps=1", "callbacks.step_checkpoint.every_n_train_steps=20", "test=false")
    last = run / "checkpoints" / "last.ckpt"
    killed = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it after its first checkpoint (step 20), once it has logged some steps beyond it
        while killed.poll() is None and not (last.exists() and last_logged_step(run / "metrics.csv") >= 30):
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before its first checkpoint"
    at_kill = torch.load(last, weights_only=True)
    steps_per_epoch = 162  # 1,294 digits training images, batches of 8
    assert at_kill["global_step"] < 3 * steps_per_epoch

    resumed = subprocess.run([*args, "ckpt_path=last"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 2 and final["global_step"] == 3 * steps_per_epoch
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3 * steps_per_epoch}  # Adam's moments continued, not restarted
    metrics = read_rows(run / "metrics.csv")
    train_steps = [int(r["step"]) for r in metrics if r["train/loss"]]
    assert train_steps == list(range(3 * steps_per_epoch))  # every step once: none lost, none twice
    assert [int(r["epoch"]) for r in metrics if r["val/nll"]] == [0, 1, 2]
    assert [int(r["epoch"]) for r in read_rows(run / "entropy.csv")] == [0, 1, 2]
    assert not list(run.glob("checkpoints/*.tmp"))


# ----------------------------------------------------------------------------------------- DDP
def test_ddp_cpu_two_processes_through_the_cli(tmp_path):
    """A short real run (fast_dev_run suppresses the logs this checks): 2 gloo processes, the
    validation NLL reduced over both halves of the split, the entropy probe written once."""
    run = tmp_path / "run"
    result = subprocess.run(command(run, *TINY, "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                    "data.batch_size=32", "test=false"),
                            capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("run folder:") == 1  # the summary is printed once (rank 0)
    assert len(read_rows(run / "entropy.csv")) == 1
    logged = float(next(r for r in read_rows(run / "metrics.csv") if r["val/nll"])["val/nll"])
    module = ConvACModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    x, _ = create_datamodule("digits").split("val")  # 144 images: 72 on each process, none padded
    with torch.no_grad():
        assert logged == pytest.approx(-module(x).mean().item(), rel=1e-5)


# --------------------------------------------------------------------------------- bad inputs
def write_idx(path: Path, array: np.ndarray, magic: bytes = b"\x00\x00\x08") -> None:
    header = magic + bytes([array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def idx_folder(tmp_path: Path, corrupt: str) -> Path:
    """A t10k IDX folder (10 tiny images) with one defect, ``corrupt`` naming it."""
    root = tmp_path / "idx"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28))
    labels = rng.integers(0, 10, 10)
    if corrupt == "labels_out_of_range":
        labels[3] = 12
    if corrupt == "other_size":
        images = rng.integers(0, 256, (10, 32, 32))
    write_idx(root / "t10k-images-idx3-ubyte", images, b"\x00\x01\x08" if corrupt == "magic" else b"\x00\x00\x08")
    write_idx(root / "t10k-labels-idx1-ubyte", labels)
    if corrupt == "truncated":
        data = (root / "t10k-images-idx3-ubyte").read_bytes()
        (root / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
    if corrupt == "truncated_gz":
        data = (root / "t10k-images-idx3-ubyte").read_bytes()
        (root / "t10k-images-idx3-ubyte").unlink()
        (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:-20])
    return root


def debd_folder(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "debd"
    root.mkdir()
    for split in ("train", "valid", "test"):
        (root / f"toy.{split}.data").write_text(text if split == "train" else "0,1,0\n1,1,0\n")
    return root


IDX = ["data=mnist", "data.split=t10k"]
DEBD = ["data=debd", "data.dataset=toy", "data.in_shape=[1,1,3]", "model/leaf=bernoulli"]
BAD_DATA = {
    # case: (folder builder, overrides, words the message must hold)
    "idx_wrong_magic": (lambda p: idx_folder(p, "magic"), IDX, ["not an IDX file", "magic number 00010803", "expected 0000"]),
    "idx_truncated": (lambda p: idx_folder(p, "truncated"), IDX, ["header says shape (10, 28, 28)", "file has"]),
    "idx_truncated_gzip": (lambda p: idx_folder(p, "truncated_gz"), IDX, ["corrupt gzip stream"]),
    "idx_labels_out_of_range": (lambda p: idx_folder(p, "labels_out_of_range"), IDX,
                                ["data.num_classes is 10", "labels in [0, 12]"]),
    "idx_images_of_another_size": (lambda p: idx_folder(p, "other_size"), [*IDX, "data.in_shape=[1,28,28]"],
                                   ["data.in_shape is [1, 28, 28]", "[1, 32, 32]"]),
    "csv_not_0_1": (lambda p: debd_folder(p, "0,1,0\n1,2,0\n"), DEBD, ["data.num_values is 2", "values in [0, 2]"]),
    "csv_ragged_rows": (lambda p: debd_folder(p, "0,1,0\n1,1\n"), DEBD, ["toy.train.data", "columns changed from 3 to 2"]),
    "csv_not_numbers": (lambda p: debd_folder(p, "0,1,0\n1,x,0\n"), DEBD, ["toy.train.data", "could not convert string 'x'"]),
    "csv_empty": (lambda p: debd_folder(p, ""), DEBD, ["toy.train.data", "no data"]),
}


def assert_user_error(status_and_stderr: tuple[int, str], prog: str, words: list[str]) -> None:
    """Exit status 1 and one ``convac-<prog>: error:`` line holding ``words``, no traceback."""
    status, stderr = status_and_stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"convac-{prog}: error:")]
    assert status == 1 and len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


def assert_no_run_files(run: Path) -> None:
    assert not [name for name in RUN_FILES if (run / name).exists()]


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_files(tmp_path, cli_error, case):
    build, overrides, words = BAD_DATA[case]
    root = build(tmp_path)
    assert_user_error(cli_error("train", tmp_path / "run", *TINY, *overrides, f"data.root={root}"), "train", words)
    assert_no_run_files(tmp_path / "run")


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny digits run (HT, 3 components, 4 channels), trained in-process."""
    from hydra import compose, initialize_config_module

    from convac.cli.train import train

    out = tmp_path_factory.mktemp("trained")
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={out}", "model.num_components=3", "model.channels=4",
                                          "callbacks=model_checkpoint", "trainer.max_epochs=1",
                                          "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                          "trainer.enable_progress_bar=false", "test=false"])
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_model_of_another_size_than_the_images(tmp_path, cli_error):
    result = cli_error("train", tmp_path / "run", *TINY, "model.in_shape=[1,16,16]")
    assert_user_error(result, "train", ["the model takes samples of shape [1, 16, 16]", "data=digits serves [1, 8, 8]"])
    assert_no_run_files(tmp_path / "run")


def test_resume_from_a_checkpoint_of_another_architecture(tmp_path, cli_error, trained_ckpt):
    result = cli_error("train", tmp_path / "run", *TINY, "model.channels=5", f"ckpt_path={trained_ckpt}")
    assert_user_error(result, "train", ["another architecture", "model.channels: checkpoint 4, this run 5"])
    assert_no_run_files(tmp_path / "run")


def test_eval_a_checkpoint_on_images_of_another_size(tmp_path, cli_error, trained_ckpt):
    result = cli_error("eval", tmp_path / "eval", f"ckpt={trained_ckpt}", "data=synthetic", "data.in_shape=[1,16,16]",
                       "data.num_values=17", "data.num_train=10", "data.num_val=10", "data.num_test=10")
    assert_user_error(result, "eval", ["the checkpoint's model takes samples of shape [1, 8, 8]",
                                       "data=synthetic serves [1, 16, 16]"])
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("content,words", [
    ("garbage", ["not a readable checkpoint"]),
    ("truncated", ["not a readable checkpoint"]),
    ("weights only", ["not a convac-train checkpoint"]),
])
def test_eval_a_file_that_is_not_a_convac_checkpoint(tmp_path, cli_error, trained_ckpt, content, words):
    bad = tmp_path / "bad.ckpt"
    if content == "truncated":
        bad.write_bytes(trained_ckpt.read_bytes()[:5000])
    elif content == "weights only":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    else:
        bad.write_bytes(b"not a checkpoint")
    assert_user_error(cli_error("eval", tmp_path / "eval", f"ckpt={bad}"), "eval", [f"ckpt={bad}", *words])


def test_hydra_full_error_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["convac-train", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "model.in_shape=[1,4,4]"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"takes samples of shape \[1, 4, 4\]"):
        train_main()


def test_unwritable_output_folder(tmp_path, cli_error):
    (tmp_path / "a_file").write_text("")
    result = cli_error("train", tmp_path / "run", *TINY, f"output_dir={tmp_path / 'a_file' / 'out'}")
    assert_user_error(result, "train", ["Not a directory", "a_file/out"])


@pytest.mark.parametrize("overrides,words", [
    (["model/leaf=gaussian", "data.continuous=true", "model.leaf.min_std=-0.5"], ["Gaussian min_std must be a finite number > 0, got -0.5"]),
    (["model.leaf.num_values=1"], ["Categorical num_values must be an integer >= 2, got 1"]),
    (["model.num_components=0"], ["num_components must be a positive integer, got 0"]),
    (["model.pool=[2,0]"], ["pool must be an int or an (h, w) pair of positive integers, got [2, 0]"]),
    (["callbacks.entropy_probe.num_samples=1"], ["num_samples must be an integer >= 2, got 1"]),
])
def test_invalid_model_settings_stop_before_the_run_folder(tmp_path, cli_error, overrides, words):
    """A bad model or callback setting (``model.leaf.min_std=-0.5`` would give NaN likelihoods at
    step 0) exits with a one-line error naming it and leaves no run-folder files."""
    assert_user_error(cli_error("train", tmp_path / "run", *TINY, *overrides), "train", words)
    assert_no_run_files(tmp_path / "run")


def test_unknown_group_option_lists_the_options(tmp_path, cli_error):
    result = cli_error("train", tmp_path / "run", "model=foo")
    assert_user_error(result, "train", ["model=foo: no such option in 'model'", "available: cp, cp_classifier, ht, ht_classifier"])
    assert_no_run_files(tmp_path / "run")


# ---------------------------------------------------------------------------- non-finite guard
MODEL = {"in_shape": [1, 8, 8], "leaf": {"name": "categorical", "num_values": 17}, "num_components": 3, "channels": 4}


def fit_with_guard(tmp_path, module: ConvACModule) -> str:
    trainer = L.Trainer(max_epochs=1, limit_train_batches=6, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[FiniteGuard()])
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, datamodule=create_datamodule("digits", batch_size=32))
    return str(error.value)


def saved_checkpoint(message: str, tmp_path: Path) -> Path:
    path = Path(message.rsplit("saved to ", 1)[1])
    assert path.parent == tmp_path and path.is_file()
    return path


def poisoned_from(call: int):
    """A tensor or forward hook replacing its tensor with NaNs from its ``call``-th call on (0-based)."""
    calls = []

    def poison(*args):
        calls.append(None)
        return torch.full_like(args[-1], float("nan")) if len(calls) > call else None

    return poison


class OverflowingGradient(L.LightningModule):
    """A finite loss (0) whose gradients (+-3e34) overflow float32 once scaled by 2^14 or more."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch, batch_idx):
        return (self.w[0] - self.w[1]) * 3e34

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-40)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)


def test_guard_leaves_an_overflowing_gradient_under_loss_scaling_to_the_scaler(tmp_path):
    """16-mixed as on a GPU (float16 autocast and a GradScaler; Lightning's plugin, here on the
    CPU): the scaler skips the overflowing updates and lowers its scale, and the guard lets it."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    module = OverflowingGradient()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[FiniteGuard()],
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module)
    assert scaler.get_scale() == 2.0 ** 13  # three steps, each skipped: the scale halved three times
    assert module.w.tolist() == [1.0, 1.0]  # no update applied


def test_guard_names_the_batch_and_the_layer_of_a_nan_gradient(tmp_path):
    module = ConvACModule("ht", MODEL)
    dict(module.named_parameters())["model.sums.1.logits"].register_hook(poisoned_from(3))
    message = fit_with_guard(tmp_path, module)
    assert "non-finite gradient at epoch 0, batch 3 (global step 3): layer model.sums.1.logits" in message
    saved = torch.load(saved_checkpoint(message, tmp_path), weights_only=True)
    assert saved["global_step"] == 3  # the state before the bad update, which was not applied
    assert all(v.isfinite().all() for v in saved["state_dict"].values())


def test_guard_names_the_parameter_that_made_the_loss_nan(tmp_path):
    module = ConvACModule("ht", MODEL)
    with torch.no_grad():
        module.model.leaves.logits[5, 0, 3, 1] = float("nan")
    message = fit_with_guard(tmp_path, module)
    assert "non-finite loss at epoch 0, batch 0 (global step 0)" in message
    assert "parameter model.leaves.logits holds non-finite values" in message
    saved_checkpoint(message, tmp_path)


def test_guard_finds_the_layer_whose_output_overflowed(tmp_path):
    module = ConvACModule("ht", MODEL)
    module.model.sums[1].register_forward_hook(poisoned_from(2))
    message = fit_with_guard(tmp_path, module)
    assert "non-finite loss at epoch 0, batch 2 (global step 2)" in message
    assert "first non-finite output in layer model.sums.1 (SumLayer)" in message
    saved_checkpoint(message, tmp_path)


def test_guard_names_the_leaves_when_they_make_the_first_nan(tmp_path):
    """A NaN made by the leaves is blamed on the leaf layer, not on ``model.sums.0``: the leaf
    layer is on the data path the guard watches."""
    module = ConvACModule("ht", {**MODEL, "leaf": {"name": "gaussian"}})
    object.__setattr__(module.model.leaves, "min_std", -0.5)  # an unchecked min_std: std < 0
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[FiniteGuard()])
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, datamodule=create_datamodule("digits", batch_size=32, continuous=True))
    message = str(error.value)
    assert "non-finite loss at epoch 0, batch 0 (global step 0)" in message
    assert "first non-finite output in layer model.leaves (GaussianLayer)" in message
