"""Config mistakes in every group stop before training with one line naming the key.

The model, data and module groups are typed by dataclass schemas (errors at composition or,
for ``???`` values, when the config is converted); the trainer, callbacks and logger groups are
``_target_`` nodes checked against their constructor's signature (``convac.config.targets``).
"""
from __future__ import annotations

import enum
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
import torch
from hydra import compose, initialize_config_module

from convac.config.targets import check_targets, describe, fits

# group -> (a value of the wrong type, a mandatory value left unset): each must name its key
MISTAKES = {
    "model": ("model.num_components=abc", "model.num_components=???"),
    "data": ("data.batch_size=abc", "data=mnist"),  # data=mnist leaves data.root unset
    "module": ("module.lr=abc", "module.lr=???"),
    "trainer": ("trainer.max_epochs=abc", "trainer.max_epochs=???"),
    "callbacks": ("callbacks.model_checkpoint.save_top_k=abc", "callbacks.model_checkpoint.monitor=???"),
    "logger": ("logger.csv.flush_logs_every_n_steps=abc", "logger.csv.save_dir=???"),
    "top level": ("seed=abc", "threads=???"),
}
KEYS = {"data=mnist": "data.root"}


def assert_one_line(status_and_stderr: tuple[int, str], words: list[str]) -> None:
    """Exit status 1 and nothing on stderr but one ``convac-train: error:`` line holding ``words``."""
    status, stderr = status_and_stderr
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("convac-train: error: "), stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("group,kind", [(g, k) for g in MISTAKES for k in ("wrong type", "missing")])
def test_every_group_names_the_key_in_one_line(tmp_path, cli_error, group, kind):
    override = MISTAKES[group][kind == "missing"]
    key = KEYS.get(override, override.split("=")[0])
    words = [f"{key}: missing mandatory value"] if kind == "missing" else [f"{key}:", "abc"]
    assert_one_line(cli_error("train", tmp_path / "run", override), words)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("override,words", [
    ("trainer.max_epoch=3", ["trainer.max_epoch", "+trainer.max_epoch=3"]),  # not in the trainer config
    ("+trainer.max_epoch=3", ["trainer.max_epoch: Trainer takes no argument 'max_epoch'", "did you mean max_epochs"]),
    ("trainer.precision=33", ["trainer.precision: expected one of 64, 32, 16,", "'bf16-mixed'", "got 33 (int)"]),
    ("trainer.limit_train_batches=[1]", ["trainer.limit_train_batches: expected float or int or None, got [1] (list)"]),
    ("callbacks.entropy_probe.plot=maybe", ["callbacks.entropy_probe.plot: expected bool, got 'maybe' (str)"]),
    ("callbacks.model_checkpoint._target_=no.such.Callback", ["callbacks.model_checkpoint._target_: cannot import 'no.such.Callback'"]),
    ("model.channels=[4", ["model.channels=[4"]),  # an override that does not parse
    ("module.data_softening=0.99", ["data softening's flip probability must be in [0, 0.941176) for 17 values, got 0.99"]),
])
def test_other_mistakes_in_one_line(tmp_path, cli_error, override, words):
    assert_one_line(cli_error("train", tmp_path / "run", override), words)


def test_eval_names_the_key_in_one_line(tmp_path, cli_error):
    status, stderr = cli_error("eval", tmp_path / "run", "ckpt=x.ckpt", "missing_fraction=abc")
    assert status == 1 and stderr.strip().splitlines() == [stderr.strip()] and "missing_fraction" in stderr


def test_exit_status_and_one_line_from_the_console_script(tmp_path):
    """A bad trainer value as a user meets it: a separate process, ``trainer.max_epochs=abc``."""
    result = subprocess.run([sys.executable, "-m", "convac.cli.train", f"hydra.run.dir={tmp_path / 'run'}",
                             "trainer.max_epochs=abc"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["convac-train: error: trainer.max_epochs: expected int or None, got 'abc' (str)"]


def test_extra_trainer_arguments_still_pass(tmp_path):
    """``+trainer.<argument>`` adds any Trainer argument; a right one passes the check."""
    with initialize_config_module("convac.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path}", "+trainer.profiler=simple", "+trainer.max_time=00:00:10:00",
                                          "trainer.devices=[0]", "trainer.precision=bf16-mixed", "trainer.deterministic=warn"])
    check_targets(cfg)


class Color(enum.Enum):
    red = "r"


@pytest.mark.parametrize("annotation,good,bad", [
    (Optional[int], [3, None], ["3", 1.5, True]),
    (float, [1, 1.5], ["1.5", False]),
    (Union[bool, Literal["warn"]], [True, "warn"], ["no", 1]),
    (list[int], [[], [1, 2]], [[1, "a"], 1]),
    (dict[str, int], [{"a": 1}], [{"a": "x"}, [1]]),
    (tuple[int, int], [[1, 2]], [[1], [1, "2"]]),
    (Path, ["/tmp"], [3]),
    (Color, ["red", "r"], ["blue"]),
])
def test_fits(annotation, good, bad):
    assert all(fits(v, annotation) for v in good)
    assert not any(fits(v, annotation) for v in bad)
    assert fits({"_target_": "x.Y"}, annotation)  # a nested object: checked as a node of its own


def test_describe():
    assert describe(Optional[int]) == "int or None"
    assert describe(Union[Literal[1, 2], Literal["a"], None]) == "one of 1, 2, 'a' or None"
    assert describe(list[int]) == "list of int"


def test_a_run_folder_that_cannot_be_made_is_named_in_one_line(tmp_path, cli_error):
    (tmp_path / "file").write_text("in the way")
    status_and_stderr = cli_error("train", tmp_path / "file" / "run", "trainer.max_epochs=1")
    assert_one_line(status_and_stderr, [str(tmp_path / "file" / "run"), "cannot create the run folder"])


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    """Only convac's user errors become one line: a ValueError or OSError raised inside the
    training code (a bug, not the user's input) propagates with its traceback."""
    from convac.cli.train import main as train_main
    from convac.training import ConvACModule

    for bug in (ValueError("an internal bug"), PermissionError("an internal bug")):
        def broken_step(self, batch, batch_idx, bug=bug):
            raise bug

        monkeypatch.setattr(ConvACModule, "training_step", broken_step)
        monkeypatch.setattr(sys, "argv", ["convac-train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=1",
                                          "~callbacks.entropy_probe", "~callbacks.pictures", "threads=1",
                                          "trainer.enable_progress_bar=false"])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        with pytest.raises(type(bug), match="an internal bug"):
            train_main()


def test_user_errors_are_the_builtin_exceptions_too():
    """``except ValueError`` / ``except FileNotFoundError`` still catch convac's user errors."""
    from convac import HTConvAC, InvalidValueError, MissingFileError, UserError, load_pretrained

    with pytest.raises(InvalidValueError) as bad_shape:
        HTConvAC((1, 2, 2), "bernoulli", 2, 2)(torch.zeros(1, 1, 3, 3))
    assert isinstance(bad_shape.value, (ValueError, UserError))
    with pytest.raises(MissingFileError) as missing:
        load_pretrained("/no/such/weights.safetensors")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, UserError)
