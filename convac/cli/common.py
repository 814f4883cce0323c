"""What the entry points share: seeding and threads, and the trainer built from its config."""
from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from convac.configs import schema


def start(cfg: DictConfig) -> None:
    """Check ``cfg`` (:func:`schema.to_object`), seed everything, set the torch threads."""
    schema.to_object(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """``cfg.trainer`` with every entry of ``cfg.callbacks`` and ``cfg.logger`` (dicts of
    ``_target_`` nodes; either may be absent, and an absent ``logger`` group leaves the
    trainer's own ``logger`` setting alone)."""
    extra = {"callbacks": [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]}
    if "logger" in cfg:
        extra["logger"] = [instantiate(c) for c in (cfg.logger or {}).values()] or False
    return instantiate(cfg.trainer, **extra)
