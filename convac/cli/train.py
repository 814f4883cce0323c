"""``convac-train [overrides]``: train a ConvAC from the Hydra configs in :mod:`convac.configs`.

Writes into the run folder (``hydra.run.dir``): ``config.yaml`` (resolved), ``metrics.csv``,
``checkpoints/last.ckpt`` and ``checkpoints/best-*.ckpt``. ``ckpt_path=last`` with the same
``hydra.run.dir`` resumes a run.
"""
from __future__ import annotations

from pathlib import Path

import hydra
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
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    print(f"\nrun folder: {out.resolve()}")
    print(f"  config:      {out / 'config.yaml'}")
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            print(f"  metrics:     {logger.experiment.metrics_file_path}")
        elif logger.log_dir:
            print(f"  {type(logger).__name__}: {logger.log_dir}")
    if best:
        print(f"  last ckpt:   {checkpoint.last_model_path}")
        print(f"  best ckpt:   {best} ({checkpoint.monitor}={float(checkpoint.best_model_score):.4f})")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://convac.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final ``val/loss`` (for Hydra sweepers)."""
    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
