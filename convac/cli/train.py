"""``convac-train [overrides]``: train a ConvAC from the Hydra configs in ``configs/`` (the package ``convac.configs``).

Writes into the run folder (``hydra.run.dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``hparams.yaml``, ``checkpoints/last.ckpt`` and ``checkpoints/best-*.ckpt``, and what the
callbacks write (default: ``entropy.csv``, ``entropy.png``, ``gaps.csv``, ``gaps.png``,
``samples.png``, ``inpaint.png``); the summary printed at the end lists every file written. The data is read
first, and the layout read from it fills the config's null ``data.in_shape`` (``num_values``,
``num_classes``), which the model config interpolates. ``ckpt_path=last``
with the same ``hydra.run.dir`` resumes a run (also one that was killed). The data, the model
and a checkpoint to resume are checked before anything is written, so a bad input leaves no
partial run folder files; the console entry point reports such errors in one line.

The Hydra application returns the final value of the config's ``optimized_metric`` (default
``val/loss``) to Hydra's sweepers (``hparams_search=debd_optuna``: Optuna minimizes it).
"""
from __future__ import annotations

import difflib
import sys
import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from convac.cli.common import (build_trainer, hydra_errors_raised, make_run_folder, read_checkpoint,
                               setup_data, start, task_errors)
from convac.config import schema
from convac.errors import InvalidValueError
from convac.training import ConvACModule
from convac.training.module import check_precision


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the model of a composed ``train`` config; returns the final metrics."""
    started = time.time()
    start(cfg)
    out = Path(cfg.output_dir)
    datamodule = setup_data(cfg)  # read and check the files now, before the run folder is written
    model_kwargs = schema.to_kwargs(cfg.model)
    datamodule.check_leaf(model_kwargs["leaf"])
    module = ConvACModule(
        model_name=model_kwargs.pop("name"),
        model_kwargs=model_kwargs,
        **OmegaConf.to_container(cfg.module, resolve=True, enum_to_str=True),
    )
    datamodule.check_fits(module.model, "the model")
    resume = resume_path(cfg.ckpt_path, out)
    if resume is not None:
        module.check_checkpoint(read_checkpoint(resume, "ckpt_path"))
    trainer = build_trainer(cfg)
    check_precision(trainer.precision, module.use_em)
    make_run_folder(out)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # testing resets them
        notes = checkpoint_notes(trainer)  # before testing, which reloads the callbacks' state
        checkpoint = trainer.checkpoint_callback
        if cfg.test:
            trainer.test(module, datamodule=datamodule, ckpt_path=(checkpoint and checkpoint.best_model_path) or None)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        finish_wandb_run()
    rank_zero_only(print)(run_summary(out, started, notes))
    return metrics


def finish_wandb_run() -> None:
    """End the W&B run that ``logger=wandb`` started, if any (``wandb.finish``: its files are
    complete, and the next run of this process, e.g. a sweep's next trial, starts a run of its
    own; Lightning's WandbLogger leaves it open)."""
    wandb = sys.modules.get("wandb")  # imported only by a WandbLogger that logged
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The final value of the metric ``name`` (the config's ``optimized_metric``) among a run's
    ``metrics``, for a Hydra sweeper; None when ``name`` is None. A name the run did not log
    raises an :class:`InvalidValueError` naming it (and the closest names logged)."""
    if name is None:
        return None
    if name not in metrics:
        close = difflib.get_close_matches(name, list(metrics), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"logged: {', '.join(sorted(metrics)) or 'none'}"
        raise InvalidValueError(f"optimized_metric={name}: the run logged no such metric ({hint})")
    return metrics[name]


def resume_path(ckpt_path: str | None, out: Path) -> Path | None:
    """The checkpoint that ``ckpt_path`` names: ``"last"`` is ``<out>/checkpoints/last.ckpt``
    (None while there is none: the run then starts afresh)."""
    if ckpt_path != "last":
        return None if ckpt_path is None else Path(ckpt_path)
    last = out / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


# What the files of a run folder hold (by file name), for the summary.
RUN_FILES = {
    "config.yaml": "the resolved config",
    "metrics.csv": "metrics of every logged step and epoch (test/... last)",
    "hparams.yaml": "the module's and the data's settings",
    "entropy.csv": "entropy probe: level entropies, gaps C and ratios beta per probed epoch",
    "entropy.png": "entropy probe: the chain, C and beta against the epoch",
    "gaps.csv": "entropy probe: every mapping's gap per probed epoch",
    "gaps.png": "where information is created: the gaps per level",
    "samples.png": "samples of the model (one row per class for classifiers)",
    "inpaint.png": "completions of masked test images (sampling and MPE)",
    "fit-profile.txt": "time spent in each training hook and step (trainer.profiler, debug=profiler)",
    "test-profile.txt": "time spent in each test hook and step (trainer.profiler, debug=profiler)",
    "mlflow.db": "MLflow's store of the run (logger=mlflow; browse it: mlflow ui --backend-store-uri sqlite:///<this file>)",
}
# Folders of the run folder that a logger fills with many files of its own: one line each.
RUN_FOLDERS = {
    "wandb": "W&B's offline run (logger=wandb; upload it: wandb sync <this folder>/offline-run-*)",
    "mlartifacts": "MLflow's artifacts of the run (logger=mlflow with logger.mlflow.log_model=true)",
}


def checkpoint_notes(trainer: L.Trainer) -> dict[Path, str]:
    """What each checkpoint of the checkpoint callbacks is: the best (with its score) or the last."""
    notes = {}
    for c in trainer.checkpoint_callbacks:  # callbacks/model_checkpoint.yaml: best+last, steps
        if c.last_model_path or (c.monitor is None and c.best_model_path):
            notes[Path(c.last_model_path or c.best_model_path)] = "the last state (resume: ckpt_path=last)"
        if c.monitor and c.best_model_path:
            notes[Path(c.best_model_path)] = f"the best checkpoint ({c.monitor}={float(c.best_model_score):.4f})"
    return notes


def run_summary(out: Path, since: float, notes: dict[Path, str]) -> str:
    """Every file this run wrote into the run folder ``out`` (modified at or after the time
    ``since``, in seconds since the epoch), and checkpoints it wrote elsewhere, each with what it
    holds (``notes`` for checkpoints, :data:`RUN_FILES` by name); a logger's folder of
    :data:`RUN_FOLDERS` is one line."""
    new = [p for p in sorted(out.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.stat().st_mtime >= since]
    folders = [f for f in RUN_FOLDERS if any(p.relative_to(out).parts[0] == f for p in new)]
    written = [p for p in new if p.relative_to(out).parts[0] not in RUN_FOLDERS]
    written += [p for p in notes if p.is_file() and p not in written]
    names = [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in written]
    width = max(map(len, names + [f + "/" for f in folders]), default=0)
    lines = [f"\nrun folder: {out.resolve()}"]
    for path, name in zip(written, names):
        what = notes.get(path) or RUN_FILES.get(path.name) or ("the log" if path.suffix == ".log" else "")
        lines.append(f"  {name:<{width}}  {what}".rstrip())
    lines += [f"  {folder + '/':<{width}}  {RUN_FOLDERS[folder]}" for folder in folders]
    if (out / ".hydra").is_dir():
        lines.append(f"  {'.hydra/':<{width}}  Hydra's record of the command (config.yaml, overrides.yaml)")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra application: trains ``cfg``; returns the final value of ``cfg.optimized_metric``
    (default ``val/loss``; for Hydra sweepers, :func:`optimized_value`)."""
    with task_errors("convac-train"):
        return optimized_value(train(cfg), cfg.optimized_metric)


def main() -> None:
    """Console entry point. A config mistake (any group: a misspelled key, a wrong type, a
    mandatory value left unset) or a user's error (bad data, model, checkpoint or folder; a
    non-finite loss) exits 1 with a one-line message."""
    with hydra_errors_raised("convac-train"):
        hydra_main()


if __name__ == "__main__":
    main()
