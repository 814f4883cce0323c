"""lightning-hydra-template's conventions: an Optuna search (``hparams_search=debd_optuna``) that
receives the run's ``optimized_metric``, the ``debug`` configs, the ``wandb`` and ``mlflow``
loggers (offline, into the run folder) and the run's ``tags``.

The sweep runs through the command line (a Hydra multirun with the Optuna sweeper); the other
runs are composed and trained in this process. Nothing reaches the network: W&B runs offline,
MLflow writes a SQLite store in the run folder, and both tools' telemetry is off. A test of an
optional tool is skipped only where its extra (``optuna``, ``wandb``, ``mlflow``; all in ``dev``)
is not installed.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from convac.cli.common import one_line
from convac.cli.train import optimized_value, train
from convac.errors import InvalidValueError

# A tiny digits run: 2 small batches of training, 1 of validation and test, no probe or pictures.
SMALL = [
    "model.num_components=3",
    "model.channels=4",
    "data.batch_size=128",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def compose_train(output_dir, *overrides):
    with initialize_config_module("convac.configs", version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", *overrides])


def write_debd(folder, name, variables=10, seed=0):
    """A DEBD-format binary set ``folder/name.{train,valid,test}.data`` (200, 40 and 40 rows) whose
    columns depend on each other through a hidden switch, so that structure learning has
    something to find."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", 200), ("valid", 40), ("test", 40)):
        switch = rng.integers(0, 2, (rows, 1))
        x = (rng.random((rows, variables)) < np.where(switch == 1, 0.8, 0.2)).astype(int)
        (folder / f"{name}.{split}.data").write_text("\n".join(",".join(map(str, r)) for r in x) + "\n")


def last_logged(metrics_csv, column):
    with open(metrics_csv, newline="") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r.get(column)][-1]


# ------------------------------------------------------------------------- hparams_search
def test_optuna_search_minimizes_the_optimized_metric(tmp_path):
    """Two trials of hparams_search=debd_optuna through the CLI: each run's config holds the search's
    optimized_metric and tags, the sweeper drew module.lr and module.em.pseudocount in their ranges,
    and optimization_results.yaml's best value is the smaller of the runs' last val/nll."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    write_debd(tmp_path / "debd", "tiny")
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "convac.cli.train", "-m", "hparams_search=debd_optuna",
         f"data.root={tmp_path / 'debd'}", "data.dataset=tiny", f"hydra.sweep.dir={sweep}",
         "hydra.sweeper.n_trials=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "threads=1",
         "~callbacks.entropy_probe", "~callbacks.pictures"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"module.lr", "module.em.pseudocount"}
    values = []
    for trial in ("0", "1"):
        config = yaml.safe_load((sweep / trial / "config.yaml").read_text())
        assert config["optimized_metric"] == "val/nll" and config["tags"] == ["debd", "optuna"]
        assert config["module"]["optimizer"] == "em"  # the DEBD recipe (experiment/debd_ht.yaml)
        assert 0.03 <= config["module"]["lr"] <= 1.0 and 0.01 <= config["module"]["em"]["pseudocount"] <= 1.0
        values.append(last_logged(sweep / trial / "metrics.csv", "val/nll"))
    assert results["best_value"] == pytest.approx(min(values), rel=1e-6)


def test_optimized_value_names_a_metric_that_was_not_logged():
    metrics = {"val/nll": 2.5, "val/loss": 2.5, "test/nll": 2.6}
    assert optimized_value(metrics, "val/nll") == 2.5
    assert optimized_value(metrics, None) is None
    with pytest.raises(InvalidValueError, match=r"optimized_metric=val/nlll: the run logged no such metric "
                                                r"\(did you mean val/nll"):
        optimized_value(metrics, "val/nlll")
    with pytest.raises(InvalidValueError, match=r"logged: test/nll, val/loss, val/nll\)$"):
        optimized_value(metrics, "accuracy")


def test_cli_reports_an_unlogged_optimized_metric_in_one_line(tmp_path, cli_error):
    status, stderr = cli_error("train", tmp_path / "run", *SMALL, "callbacks=none", "trainer.max_epochs=1",
                               "optimized_metric=val/acc")
    assert status == 1
    assert stderr.strip().splitlines()[-1].startswith(
        "convac-train: error: optimized_metric=val/acc: the run logged no such metric"), stderr[-2000:]


def test_train_config_defaults_and_typed_top_level_keys():
    """optimized_metric defaults to val/loss (what the runs returned before), tags to none; both are
    in the schema, so a wrong type still fails at composition, naming the key."""
    cfg = compose_train("/tmp/unused")
    assert cfg.optimized_metric == "val/loss" and list(cfg.tags) == []
    for override, message in (("tags=abc", "tags: Invalid value assigned: str is not a ListConfig"),
                              ("optimized_metrc=val/nll", "optimized_metrc: Key 'optimized_metrc' not in 'TrainConfig'"),
                              ("hparams_search=nope", "hparams_search=nope: no such option in 'hparams_search'"),
                              ("debug=nope", "debug=nope: no such option in 'debug'; available: default, fdr, limit")):
        with pytest.raises(Exception) as error:
            compose_train("/tmp/unused", override)
        assert one_line(error.value).startswith(message), one_line(error.value)


def test_a_missing_optuna_plugin_names_the_extra(tmp_path):
    """Without hydra-optuna-sweeper (hidden from this subprocess), hparams_search=debd_optuna fails
    in one line that names the extra to install."""
    hide = ("import sys; sys.modules.update(dict.fromkeys(['hydra_plugins.hydra_optuna_sweeper', "
            "'hydra_plugins.hydra_optuna_sweeper.config', 'hydra_plugins.hydra_optuna_sweeper.optuna_sweeper']));"
            f"sys.argv = ['convac-train', 'hparams_search=debd_optuna', 'hydra.sweep.dir={tmp_path / 'sweep'}'];"
            "from convac.cli.train import main; main()")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "convac-train: error: hydra/sweeper=optuna: no such option in 'hydra/sweeper'; available: basic "
        "(it comes with the optuna extra: pip install \"convac[optuna]\")"], result.stderr[-2000:]
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------- debug
@pytest.fixture
def restore_determinism():
    """``trainer.deterministic=true`` turns torch's deterministic algorithms on for the process."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


# debug config -> (its own overrides of the tiny run, files of the run folder besides config.yaml)
DEBUG = {
    "default": (SMALL, set()),
    "fdr": (SMALL[:3] + SMALL[-1:], set()),
    "limit": (SMALL[:3] + SMALL[-1:] + ["trainer.max_epochs=2"], set()),
    "overfit": (SMALL[:3] + SMALL[-1:] + ["trainer.max_epochs=2", "trainer.overfit_batches=2"], set()),
    "profiler": (SMALL, {"fit-profile.txt", "test-profile.txt"}),
}


@pytest.mark.parametrize("name", list(DEBUG))
def test_debug_config_composes_and_runs(tmp_path, restore_determinism, name):
    """Each debug config composes (its trainer keys are Trainer arguments: checked by
    convac.config.targets when the run starts), runs, keeps no checkpoints and no logs, and the
    run still returns its val/loss and tests."""
    overrides, files = DEBUG[name]
    cfg = compose_train(tmp_path, f"debug={name}", *overrides)
    assert cfg.callbacks is None and cfg.logger is None
    assert cfg.trainer.enable_checkpointing is False and cfg.trainer.detect_anomaly and cfg.trainer.deterministic
    metrics = train(cfg)
    assert np.isfinite(metrics["val/loss"]) and np.isfinite(metrics["test/nll"])
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"config.yaml", *files}
    if name == "profiler":
        assert "run_training_epoch" in (tmp_path / "fit-profile.txt").read_text()


def test_debug_configs_set_what_they_say():
    settings = {name: compose_train("/tmp/unused", f"debug={name}").trainer for name in DEBUG}
    assert settings["default"].max_epochs == 1 and settings["default"].accelerator == "cpu"
    assert settings["fdr"].fast_dev_run is True
    assert settings["limit"].limit_train_batches == 4 and settings["limit"].max_epochs == 3
    assert settings["overfit"].overfit_batches == 3
    assert settings["profiler"].profiler._target_.endswith("SimpleProfiler")


# ------------------------------------------------------------------------------- loggers
TAGS = "tags=[conventions-test-tag,second-tag]"


def test_wandb_logger_writes_an_offline_run_with_the_tags(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_DIR": tmp_path / "wandb_dir", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_DATA_DIR": tmp_path / "wandb_data",
                       "WANDB_ARTIFACT_DIR": tmp_path / "wandb_artifacts"}.items():
        monkeypatch.setenv(key, str(value))
    out = tmp_path / "run"
    train(compose_train(out, *SMALL, "callbacks=none", "logger=[csv,wandb]", TAGS))
    assert wandb.run is None  # finished: a next run of this process (a sweep's trial) gets its own
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    record = runs[0].read_bytes()  # W&B's transaction log: protobuf records, strings stored as they are
    assert b"conventions-test-tag" in record and b"second-tag" in record
    assert b"val/nll" in record and b"model_name" in record  # the metrics and the hyperparameters
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["tags"] == ["conventions-test-tag", "second-tag"] and config["logger"]["wandb"]["offline"] is True
    assert "  wandb/  " in capsys.readouterr().out  # the summary names the folder, not its many files


def test_mlflow_logger_writes_a_local_store_with_the_tags(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train(compose_train(out, *SMALL, "callbacks=none", "logger=[csv,mlflow]", TAGS))
    assert (out / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("convac")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == \
        {"conventions-test-tag": "", "second-tag": ""}
    assert {"val/nll", "test/nll"} <= set(run.data.metrics) and run.data.params["model_name"] == "ht"
    assert yaml.safe_load((out / "config.yaml").read_text())["tags"] == ["conventions-test-tag", "second-tag"]
    assert "  mlflow.db  " in capsys.readouterr().out
