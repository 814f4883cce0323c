"""What the entry points share: seeding and threads, the data module built from its config (with
the layout read from the data filled into the config), the trainer built from its config, reading
a checkpoint, and reporting a user's error in one line."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from convac.configs import schema
from convac.data import ConvACDataModule, create_datamodule
from convac.training import NonFiniteError
from convac.training.allocator import keep_freed_memory
from convac.zoo.pretrained import load_checkpoint_dict

# What a user can cause and fix (a bad value, file, folder or checkpoint) or must be told of
# (a non-finite loss): reported in one line instead of a traceback.
USER_ERRORS = (ValueError, OSError, NonFiniteError)


def start(cfg: DictConfig) -> None:
    """Check ``cfg`` (:func:`schema.to_object`), seed everything, set the torch threads, and make
    the C allocator keep freed memory for the next step (:func:`keep_freed_memory`, glibc)."""
    schema.to_object(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()


def setup_data(cfg: DictConfig) -> ConvACDataModule:
    """The DataModule of ``cfg.data``, set up (its files read and checked), with the layout it
    read (``in_shape``, ``num_values``, ``num_classes``: :attr:`ConvACDataModule.layout`)
    written into ``cfg.data``, so that the model config's ``${data.in_shape}`` (and
    ``${data.num_values}``, ``${data.num_classes}``) resolve to what the data holds."""
    datamodule = create_datamodule(**schema.to_kwargs(cfg.data))
    datamodule.setup()
    for key, value in datamodule.layout.items():
        cfg.data[key] = value
    return datamodule


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """``cfg.trainer`` with every entry of ``cfg.callbacks`` and ``cfg.logger`` (dicts of
    ``_target_`` nodes; either may be absent, and an absent ``logger`` group leaves the
    trainer's own ``logger`` setting alone)."""
    extra = {"callbacks": [_instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items()]}
    if "logger" in cfg:
        extra["logger"] = [_instantiate(c, f"logger.{k}") for k, c in (cfg.logger or {}).items()] or False
    return _instantiate(cfg.trainer, "trainer", **extra)


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a ValueError of the target's constructor (a bad setting)
    comes out as a one-line ValueError naming the config ``key``, not Hydra's wrapped message."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError):
            raise ValueError(f"{key}: {e.__cause__}") from e.__cause__
        raise


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint dict of a ``convac-train`` checkpoint at ``path`` (option ``key``, for the
    messages), loaded with ``weights_only=True``; a ValueError / FileNotFoundError says why not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    return load_checkpoint_dict(path.read_bytes(), f"{key}={path}")


@contextmanager
def exit_on_error(prog: str) -> Iterator[None]:
    """Turn a :data:`USER_ERRORS` exception into ``prog: error: <message>`` (one line, on stderr)
    and exit status 1; with ``HYDRA_FULL_ERROR=1`` the exception propagates with its traceback."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
