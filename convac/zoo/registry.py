"""A registry of ConvAC architectures in the style of timm: builders registered by name.

A builder is a function ``(**kwargs) -> ConvAC``. The generic architectures ``"ht"`` and
``"cp"`` take the constructor's arguments (they are the ``name`` of the ``model/`` configs);
the zoo's named entries (:mod:`convac.zoo.entries`) fix them from their experiment config and
may ship weights (:mod:`convac.zoo.cards`), loaded only after their pinned sha256 is verified.
Saved models (``"hf-hub:ORG/NAME"``, ``"local-dir:PATH"``: :mod:`convac.zoo.hub`) load the same way.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from convac.errors import InvalidValueError
from convac.model import Architecture, CPConvAC, HTConvAC
from convac.zoo import hub
from convac.zoo import pretrained as weights_io
from convac.zoo.cards import ModelCard, load_cards

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator that registers a builder under ``name`` (default: the function's name)."""

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _BUILDERS:
            raise InvalidValueError(f"a model named {key!r} is already registered")
        _BUILDERS[key] = builder
        return builder

    return register(fn) if fn is not None else register


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture or zoo entry (timm's ``is_model``); the
    ``hf-hub:`` / ``local-dir:`` sources of :func:`create_model` are not names."""
    return name in _BUILDERS


def list_models(pattern: str | Sequence[str] | None = None, pretrained: bool = False) -> list[str]:
    """Sorted names of the registered architectures, optionally filtered by a glob ``pattern``
    (or any of several, timm's ``filter``: ``"ht_*"``, ``["cp_*", "*_classifier"]``); with
    ``pretrained=True`` only those that ship weights."""
    names = sorted(_BUILDERS)
    if pretrained:
        names = [n for n in names if n in load_cards()]
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def create_model(name: str, pretrained: bool | str | Path = False, checkpoint_path: str | Path | None = None,
                 **overrides) -> nn.Module:
    """Build the architecture ``name`` with ``overrides`` (constructor arguments); timm's call.

    ``name`` is a registered name (:func:`list_models`) or a saved model (:mod:`convac.zoo.hub`):
    ``"hf-hub:ORG/NAME"`` (through huggingface_hub's cache; ``pip install "convac[hub]"``) or
    ``"local-dir:PATH"``, whose ``config.json`` gives the architecture and its arguments
    (``overrides`` replace some).

    ``pretrained=True`` loads the weights of ``name`` after verifying their pinned sha256 (a zoo
    entry's shipped file, or the ``model.safetensors`` of a saved model against its
    ``config.json``, whose architecture its metadata must match). ``checkpoint_path`` (or
    ``pretrained=PATH``) loads a ``.safetensors`` / Lightning ``.ckpt`` file instead (unpinned).
    Either way every tensor must fit the architecture, else
    :class:`~convac.zoo.pretrained.ArchitectureMismatchError`.

    The model records what rebuilds it as ``model.architecture``
    (:class:`~convac.model.Architecture`), which ``save_pretrained`` writes.

    Raises:
        InvalidValueError: an unknown name, a name without shipped weights for
            ``pretrained=True``, both ``pretrained=PATH`` and ``checkpoint_path``, a weight file
            that cannot be trusted or does not fit (the ``PretrainedError`` subclasses);
        MissingFileError: a missing weight file or saved model.
    """
    if checkpoint_path is not None and not isinstance(pretrained, bool):
        raise InvalidValueError(f"one weight file, not two: pretrained={str(pretrained)!r} and "
                                f"checkpoint_path={str(checkpoint_path)!r}")
    source = pretrained if checkpoint_path is None else checkpoint_path
    saved = name.startswith(hub.PREFIXES)
    if saved:
        folder = hub.source_folder(name, weights=source is True)
        config = hub.SavedConfig.read(folder)
        model = _build(config.architecture.name, {**config.architecture.kwargs, **overrides}, folder / hub.CONFIG_FILE)
    else:
        model = _build(name, overrides)
    if source is False:
        return model
    if source is not True:
        weights = weights_io.read_weights(source)
    elif saved:
        weights = hub.read_saved_weights(folder, config)
    else:
        card = _card(name)
        weights = weights_io.read_weights(card.weights_path, sha256=card.sha256)
    return weights_io.load_into(model, weights, f"{name} with {overrides}" if overrides else name)


def load_pretrained(name_or_path: str | Path) -> nn.Module:
    """A trained model from a zoo name (``"ht_digits"``: its shipped weights, sha256-verified),
    a saved model (``"hf-hub:ORG/NAME"``, ``"local-dir:PATH"``: :func:`create_model`), or a
    weight file (``.safetensors`` with convac metadata, or a ``convac-train`` ``.ckpt`` read with
    ``weights_only=True``), rebuilt from the architecture the file records."""
    text = str(name_or_path)
    if text in load_cards() or text.startswith(hub.PREFIXES):
        return create_model(text, pretrained=True)
    path = Path(name_or_path)
    if path.suffix not in weights_io.SUFFIXES:
        raise InvalidValueError(
            f"{name_or_path!r} is neither a pretrained model ({', '.join(list_models(pretrained=True))}), "
            f"a saved one ({hub.HUB_PREFIX}ORG/NAME, {hub.LOCAL_PREFIX}PATH) nor a {' / '.join(weights_io.SUFFIXES)} file"
        )
    weights = weights_io.read_weights(path)
    model = _build(weights.model_name, weights.model_kwargs, path)
    return weights_io.load_into(model, weights, f"{weights.model_name} {weights.model_kwargs}")


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The pretrained config (timm's ``pretrained_cfg``) of the weights ``create_model(name,
    pretrained=True)`` loads: a zoo entry's card or a saved model's ``config.json`` (only that
    file is read or downloaded). Keys: ``name``, ``architecture``, ``model_kwargs``,
    ``input_size`` ``(C, H, W)``, ``num_classes``, ``hf_hub_id``, ``file``, ``sha256``,
    ``license``, ``description``, ``dataset``, ``metrics`` (``test/nll`` nats, ``test/bpd``,
    ``test/acc``, ``num_test``), ``recipe`` (:meth:`convac.zoo.hub.SavedConfig.pretrained_cfg`).

    Raises:
        InvalidValueError: ``name`` ships no weights; what :func:`create_model` raises for a
            saved model's source and ``config.json``.
    """
    if name.startswith(hub.PREFIXES):
        folder = hub.source_folder(name, weights=False)
        hub_id = name[len(hub.HUB_PREFIX):] if name.startswith(hub.HUB_PREFIX) else None
        file = None if hub_id else folder / hub.WEIGHTS_FILE
        return hub.SavedConfig.read(folder).pretrained_cfg(name, hf_hub_id=hub_id, file=file)
    card = _card(name)
    config = hub.SavedConfig(Architecture(card.model_name, card.model_kwargs), card.sha256, hub.LICENSE, card)
    return config.pretrained_cfg(name, file=card.weights_path)


def _card(name: str) -> ModelCard:
    """The card of the zoo entry ``name``; InvalidValueError listing the entries when it has none."""
    cards = load_cards()
    if name not in cards:
        known = f"{name!r} ships no pretrained weights" if name in _BUILDERS else f"unknown model {name!r}"
        raise InvalidValueError(f"{known}; models with weights: {', '.join(list_models(pretrained=True))}")
    return cards[name]


def _build(name: str, kwargs: dict[str, Any], where: Path | None = None) -> nn.Module:
    """The model of ``name``'s builder with ``kwargs``, recording ``model.architecture`` unless
    the builder did (a zoo entry's records its generic architecture, e.g. ``"ht"`` with the
    entry's arguments). An unregistered ``name`` raises :class:`InvalidValueError` listing the
    registered ones; when ``name`` and ``kwargs`` were read from the file ``where``, so do
    arguments the builder does not take (its TypeError)."""
    if name not in _BUILDERS:
        unknown = f"{where} names the architecture {name!r}, which is not registered" if where else f"unknown model {name!r}"
        raise InvalidValueError(f"{unknown}; registered models: {', '.join(list_models())}")
    try:
        model = _BUILDERS[name](**kwargs)
    except TypeError as err:
        if where is None:
            raise
        raise InvalidValueError(f"{where}: the arguments {kwargs} do not fit the architecture {name!r} ({err})") from None
    if not isinstance(getattr(model, "architecture", None), Architecture):
        model.architecture = Architecture(name, dict(kwargs))
    return model


@register_model(name="ht")
def _ht(**kwargs) -> HTConvAC:
    return HTConvAC(**kwargs)


@register_model(name="cp")
def _cp(**kwargs) -> CPConvAC:
    return CPConvAC(**kwargs)
