"""A registry of ConvAC architectures in the style of timm: builders registered by name.

A builder is a function ``(**kwargs) -> ConvAC``. Generic architectures (``"ht"``, ``"cp"``)
take the constructor's arguments; named entries fix some of them (and may ship weights).
"""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

from convac.model import CPConvAC, HTConvAC

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator that registers a builder under ``name`` (default: the function's name)."""

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _BUILDERS:
            raise ValueError(f"a model named {key!r} is already registered")
        _BUILDERS[key] = builder
        return builder

    return register(fn) if fn is not None else register


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered architectures, optionally filtered by a glob ``pattern``."""
    names = sorted(_BUILDERS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture registered as ``name`` with ``kwargs`` (constructor arguments)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)


@register_model(name="ht")
def _ht(**kwargs) -> HTConvAC:
    return HTConvAC(**kwargs)


@register_model(name="cp")
def _cp(**kwargs) -> CPConvAC:
    return CPConvAC(**kwargs)
