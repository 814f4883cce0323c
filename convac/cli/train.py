"""``convac-train [overrides]``: train a ConvAC from the Hydra configs in :mod:`convac.configs`.

Writes into the run folder (``hydra.run.dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``entropy.csv``, ``checkpoints/last.ckpt`` and ``checkpoints/best-*.ckpt``. The data is read
first, and the layout read from it fills the config's null ``data.in_shape`` (``num_values``,
``num_classes``), which the model config interpolates. ``ckpt_path=last``
with the same ``hydra.run.dir`` resumes a run (also one that was killed). The data, the model
and a checkpoint to resume are checked before anything is written, so a bad input leaves no
partial run folder files; the console entry point reports such errors in one line.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from convac.cli.common import build_trainer, exit_on_error, read_checkpoint, setup_data, start
from convac.configs import schema
from convac.training import ConvACModule, CSVLogger


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the model of a composed ``train`` config; returns the final metrics."""
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
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # testing resets them
    summary = run_summary(trainer, out)  # before testing, which reloads the callbacks' state
    checkpoint = trainer.checkpoint_callback
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=(checkpoint and checkpoint.best_model_path) or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    rank_zero_only(print)(summary)
    return metrics


def resume_path(ckpt_path: str | None, out: Path) -> Path | None:
    """The checkpoint that ``ckpt_path`` names: ``"last"`` is ``<out>/checkpoints/last.ckpt``
    (None while there is none: the run then starts afresh)."""
    if ckpt_path != "last":
        return None if ckpt_path is None else Path(ckpt_path)
    last = out / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def run_summary(trainer: L.Trainer, out: Path) -> str:
    """Where the run folder's files are: config, logs, last and best checkpoints."""
    lines = [f"\nrun folder: {out.resolve()}", f"  config:      {out / 'config.yaml'}"]
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            lines.append(f"  metrics:     {Path(logger.log_dir) / 'metrics.csv'}")
        elif logger.log_dir:
            lines.append(f"  {type(logger).__name__}: {logger.log_dir}")
    checkpoints = trainer.checkpoint_callbacks  # callbacks/model_checkpoint.yaml: best+last, steps
    lasts = [c.last_model_path or (c.monitor is None and c.best_model_path) for c in checkpoints]
    lines += [f"  last ckpt:   {path}" for path in dict.fromkeys(p for p in lasts if p)]
    lines += [f"  best ckpt:   {c.best_model_path} ({c.monitor}={float(c.best_model_score):.4f})"
              for c in checkpoints if c.monitor and c.best_model_path]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final ``val/loss`` (for Hydra sweepers). A user's error
    (bad data, model, checkpoint or folder; a non-finite loss) exits 1 with a one-line message."""
    with exit_on_error("convac-train"):
        return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
