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
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from convac.cli.common import (build_trainer, exit_on_error, hydra_errors_raised, make_run_folder, read_checkpoint,
                               setup_data, start)
from convac.config import schema
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
        **OmegaConf.to_container(cfg.module, enum_to_str=True),
    )
    datamodule.check_fits(module.model, "the model")
    resume = resume_path(cfg.ckpt_path, out)
    if resume is not None:
        module.check_checkpoint(read_checkpoint(resume, "ckpt_path"))
    trainer = build_trainer(cfg)
    check_precision(trainer.precision, module.use_em)
    make_run_folder(out)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # testing resets them
    notes = checkpoint_notes(trainer)  # before testing, which reloads the callbacks' state
    checkpoint = trainer.checkpoint_callback
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=(checkpoint and checkpoint.best_model_path) or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    rank_zero_only(print)(run_summary(out, started, notes))
    return metrics


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
    holds (``notes`` for checkpoints, :data:`RUN_FILES` by name)."""
    written = [p for p in sorted(out.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.stat().st_mtime >= since]
    written += [p for p in notes if p.is_file() and p not in written]
    names = [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in written]
    width = max(map(len, names), default=0)
    lines = [f"\nrun folder: {out.resolve()}"]
    for path, name in zip(written, names):
        what = notes.get(path) or RUN_FILES.get(path.name) or ("the log" if path.suffix == ".log" else "")
        lines.append(f"  {name:<{width}}  {what}".rstrip())
    if (out / ".hydra").is_dir():
        lines.append(f"  {'.hydra/':<{width}}  Hydra's record of the command (config.yaml, overrides.yaml)")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra application: trains ``cfg``; returns the final ``val/loss`` (for Hydra sweepers)."""
    with exit_on_error("convac-train"):  # inside the job, so that Hydra adds no report of its own
        return train(cfg).get("val/loss")


def main() -> None:
    """Console entry point. A config mistake (any group: a misspelled key, a wrong type, a
    mandatory value left unset) or a user's error (bad data, model, checkpoint or folder; a
    non-finite loss) exits 1 with a one-line message."""
    with hydra_errors_raised("convac-train"):
        hydra_main()


if __name__ == "__main__":
    main()
