"""A registry of ConvAC architectures in the style of timm: builders registered by name.

A builder is a function ``(**kwargs) -> ConvAC``. The generic architectures ``"ht"`` and
``"cp"`` take the constructor's arguments (they are the ``name`` of the ``model/`` configs);
the zoo's named entries (:mod:`convac.zoo.entries`) fix them from their experiment config and
may ship weights (:mod:`convac.zoo.cards`), loaded only after their pinned sha256 is verified.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Callable

from torch import nn

from convac.errors import InvalidValueError
from convac.model import CPConvAC, HTConvAC
from convac.zoo import pretrained as weights_io
from convac.zoo.cards import load_cards

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


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted names of the registered architectures, optionally filtered by a glob ``pattern``;
    with ``pretrained=True`` only those that ship weights."""
    names = sorted(_BUILDERS)
    if pretrained:
        names = [n for n in names if n in load_cards()]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_model(name: str, pretrained: bool | str | Path = False, **overrides) -> nn.Module:
    """Build the architecture registered as ``name`` with ``overrides`` (constructor arguments).

    ``pretrained=True`` loads the entry's shipped weights after verifying their pinned sha256;
    a path loads that ``.safetensors`` / ``.ckpt`` file instead (unpinned). Either way every
    tensor must fit the architecture, else :class:`~convac.zoo.pretrained.ArchitectureMismatchError`.
    """
    if name not in _BUILDERS:
        raise InvalidValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    model = _BUILDERS[name](**overrides)
    if pretrained is False:
        return model
    if pretrained is True:
        cards = load_cards()
        if name not in cards:
            raise InvalidValueError(
                f"{name!r} ships no pretrained weights; models with weights: {', '.join(list_models(pretrained=True))}"
            )
        weights = weights_io.read_weights(cards[name].weights_path, sha256=cards[name].sha256)
    else:
        weights = weights_io.read_weights(pretrained)
    return weights_io.load_into(model, weights, f"{name} with {overrides}" if overrides else name)


def load_pretrained(name_or_path: str | Path) -> nn.Module:
    """A trained model from a zoo name (``"ht_digits"``: its shipped weights, sha256-verified)
    or from a weight file (``.safetensors`` with convac metadata, or a ``convac-train``
    ``.ckpt`` read with ``weights_only=True``), rebuilt from the architecture the file records."""
    if str(name_or_path) in load_cards():
        return create_model(str(name_or_path), pretrained=True)
    path = Path(name_or_path)
    if path.suffix not in weights_io.SUFFIXES:
        raise InvalidValueError(
            f"{name_or_path!r} is neither a pretrained model ({', '.join(list_models(pretrained=True))}) "
            f"nor a {' / '.join(weights_io.SUFFIXES)} file"
        )
    weights = weights_io.read_weights(path)
    if weights.model_name not in _BUILDERS:
        raise weights_io.CorruptWeightsError(
            f"{path} was written for architecture {weights.model_name!r}, which is not registered "
            f"(registered: {', '.join(list_models())})"
        )
    model = _BUILDERS[weights.model_name](**weights.model_kwargs)
    return weights_io.load_into(model, weights, f"{weights.model_name} {weights.model_kwargs}")


@register_model(name="ht")
def _ht(**kwargs) -> HTConvAC:
    return HTConvAC(**kwargs)


@register_model(name="cp")
def _cp(**kwargs) -> CPConvAC:
    return CPConvAC(**kwargs)
