"""``convac-train [overrides]``: train a ConvAC from the Hydra configs in :mod:`convac.configs`.

Writes into the run folder (``hydra.run.dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``checkpoints/last.ckpt`` and ``checkpoints/best-*.ckpt``. ``ckpt_path=last`` with the same
``hydra.run.dir`` resumes a run.
"""
from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from convac.cli.common import build_trainer, start
from convac.configs import schema
from convac.data import create_datamodule
from convac.training import ConvACModule, CSVLogger


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the model of a composed ``train`` config; returns the final metrics."""
    start(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    datamodule = create_datamodule(**schema.to_kwargs(cfg.data))
    model_kwargs = schema.to_kwargs(cfg.model)
    module = ConvACModule(
        model_name=model_kwargs.pop("name"),
        model_kwargs=model_kwargs,
        **OmegaConf.to_container(cfg.module, enum_to_str=True),
    )
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    summary = run_summary(trainer, out)  # before testing, which reloads the callbacks' state
    checkpoint = trainer.checkpoint_callback
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=(checkpoint and checkpoint.best_model_path) or None)
    rank_zero_only(print)(summary)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def run_summary(trainer: L.Trainer, out: Path) -> str:
    """Where the run folder's files are: config, logs, last and best checkpoints."""
    lines = [f"\nrun folder: {out.resolve()}", f"  config:      {out / 'config.yaml'}"]
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            lines.append(f"  metrics:     {Path(logger.log_dir) / 'metrics.csv'}")
        elif logger.log_dir:
            lines.append(f"  {type(logger).__name__}: {logger.log_dir}")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        lines.append(f"  last ckpt:   {checkpoint.last_model_path}")
        lines.append(f"  best ckpt:   {checkpoint.best_model_path} "
                     f"({checkpoint.monitor}={float(checkpoint.best_model_score):.4f})")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final ``val/loss`` (for Hydra sweepers)."""
    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
