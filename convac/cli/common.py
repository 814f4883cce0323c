"""What the entry points share: the trainer built from its config with callbacks and loggers."""
from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """``cfg.trainer`` with every entry of ``cfg.callbacks`` and ``cfg.logger`` (dicts of
    ``_target_`` nodes; either may be absent, and an absent ``logger`` group leaves the
    trainer's own ``logger`` setting alone)."""
    extra = {"callbacks": [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]}
    if "logger" in cfg:
        extra["logger"] = [instantiate(c) for c in (cfg.logger or {}).values()] or False
    return instantiate(cfg.trainer, **extra)
