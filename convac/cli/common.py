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
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from convac.config import schema, targets
from convac.data import ConvACDataModule, create_datamodule
from convac.errors import InvalidValueError, MissingFileError, UserError
from convac.training import NonFiniteError
from convac.training.allocator import keep_freed_memory
from convac.zoo.pretrained import load_checkpoint_dict

# What a user can cause and fix (a bad value, file, folder or checkpoint: convac.errors) or must
# be told of (a non-finite loss): reported in one line. Anything else is a bug and keeps its
# traceback (a ValueError of numpy or torch included).
USER_ERRORS = (UserError, NonFiniteError)
# A config mistake: composition (a misspelled key, a value of the wrong type, an unknown group
# option, an override that does not parse) or resolution (a mandatory ``???`` value left unset).
CONFIG_ERRORS = (HydraException, OmegaConfBaseException)


def start(cfg: DictConfig) -> None:
    """Check ``cfg`` (:func:`schema.to_object`: every value set and of its schema's type; then
    every ``_target_`` node against its constructor, :func:`targets.check_targets`), seed
    everything, set the torch threads, and make the C allocator keep freed memory for the next
    step (:func:`keep_freed_memory`, glibc)."""
    schema.to_object(cfg)
    targets.check_targets(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()


def setup_data(cfg: DictConfig) -> ConvACDataModule:
    """The DataModule of ``cfg.data``, set up (its files read and checked), with the layout it
    read (``in_shape``, ``num_values``, ``num_classes``, ``train_size``:
    :attr:`ConvACDataModule.layout`) written into ``cfg.data``, so that the model config's
    ``${data.in_shape}`` (and ``${data.num_values}``, ``${data.num_classes}``, a recipe's
    ``${data.train_size}``) resolve to what the data holds."""
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
    """``instantiate(node, **kwargs)``; a ValueError or Lightning's MisconfigurationException of
    the target's constructor (a bad setting) comes out as a one-line :class:`InvalidValueError`
    naming the config ``key``, not Hydra's wrapped message."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, MisconfigurationException)):
            raise InvalidValueError(f"{key}: {e.__cause__}") from e.__cause__
        raise


def make_run_folder(out: Path) -> None:
    """Create the run folder ``out`` (and its parents); one that cannot be made (no permission,
    a file in the way) raises an :class:`InvalidValueError` naming it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidValueError(f"{out}: cannot create the run folder ({e.strerror or e})") from e


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint dict of a ``convac-train`` checkpoint at ``path`` (option ``key``, for the
    messages), loaded with ``weights_only=True``; a ValueError / FileNotFoundError says why not."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{key}={path}: no such checkpoint file")
    return load_checkpoint_dict(path.read_bytes(), f"{key}={path}")


# While :func:`hydra_errors_raised` runs a Hydra application: whether the user asked for
# tracebacks (HYDRA_FULL_ERROR=1), since the variable itself is then set for Hydra; and whether
# the task itself has started (:func:`task_errors`), so that an OSError before it is Hydra's own
# setup of the run folder.
_user_wants_traceback: bool | None = None
_task_started = False


def _traceback_wanted() -> bool:
    if _user_wants_traceback is not None:
        return _user_wants_traceback
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _report(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)


@contextmanager
def exit_on_error(prog: str) -> Iterator[None]:
    """Turn a config mistake (:data:`CONFIG_ERRORS`) or a :data:`USER_ERRORS` exception into
    ``prog: error: <message>`` (one line naming the key, :func:`one_line`, on stderr) and exit
    status 1; with ``HYDRA_FULL_ERROR=1`` the exception propagates with its traceback, and so
    does any other exception (a bug).

    Used around a Hydra application (:func:`hydra_errors_raised`), inside its task
    (:func:`task_errors`) and by the commands without Hydra."""
    try:
        yield
    except (*CONFIG_ERRORS, *USER_ERRORS) as e:
        if _traceback_wanted():
            raise
        _report(prog, one_line(e))


@contextmanager
def task_errors(prog: str) -> Iterator[None]:
    """:func:`exit_on_error` inside a Hydra task (where exiting keeps Hydra from adding its own
    report), marking that the task has started: an OSError from here on is the task's."""
    global _task_started
    _task_started = True
    with exit_on_error(prog):
        yield


@contextmanager
def hydra_errors_raised(prog: str) -> Iterator[None]:
    """Around a ``@hydra.main`` call: Hydra's own errors (composition: a misspelled key, a wrong
    type, an unknown option, an override that does not parse) are raised (``HYDRA_FULL_ERROR=1``
    for the call) instead of printed over several lines, and reported by :func:`exit_on_error`;
    an OSError before the task starts is Hydra failing to create the run folder
    (``hydra.run.dir``), reported in one line too."""
    global _user_wants_traceback, _task_started
    saved = os.environ.get("HYDRA_FULL_ERROR")
    _user_wants_traceback, _task_started = saved == "1", False
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with exit_on_error(prog):
            try:
                yield
            except OSError as e:  # Hydra's MissingConfigException is an OSError too: a config mistake
                if _task_started or _traceback_wanted() or isinstance(e, CONFIG_ERRORS):
                    raise
                _report(prog, f"{e.filename or e}: cannot create the run folder ({e.strerror or e})")
    finally:
        _user_wants_traceback, _task_started = None, False
        if saved is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


# Group options that a Hydra plugin of an optional extra registers (hparams_search/debd_optuna.yaml
# picks hydra/sweeper=optuna): where it is missing, the message names the extra to install.
PLUGIN_EXTRAS = {"hydra/sweeper=optuna": "optuna"}


def one_line(e: BaseException) -> str:
    """The message of ``e`` in one line, led by the config key where there is one:

    * OmegaConf's errors (also as the cause of Hydra's): ``data.root: missing mandatory value
      (set it: data.root=...)``, ``model.chanels: Key 'chanels' not in 'HTModelConfig' (...)``;
    * an unknown group option: ``model=foo: no such option in 'model'; available: cp, ht, ...``
      (with the extra to install for an option of :data:`PLUGIN_EXTRAS`);
    * an override that does not parse: ``model.channels=[4: no viable alternative at input '[4' ...``;
    * anything else: its lines joined."""
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    if isinstance(e, OverrideParseException):
        return f"{e.override}: {_joined(e.message)}"
    if isinstance(e, MissingConfigException) and e.options is not None and "/" in (e.missing_cfg_file or ""):
        group, option = e.missing_cfg_file.rsplit("/", 1)
        extra = PLUGIN_EXTRAS.get(f"{group}={option}")
        hint = f" (it comes with the {extra} extra: pip install \"convac[{extra}]\")" if extra else ""
        return f"{group}={option}: no such option in '{group}'; available: {', '.join(e.options)}{hint}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, MissingMandatoryValue):
            return f"{key}: missing mandatory value (set it: {key}=...)"
        message = cause.msg.split("full_key:")[0]  # OmegaConf appends the key and the node's type
        context = "" if cause is e else f" ({_joined(str(e))})"
        return f"{key}: {_joined(message)}{context}"
    return _joined(str(e))


def _joined(text: str) -> str:
    return " ".join(text.split())
