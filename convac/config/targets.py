"""Checks of the ``_target_`` nodes of a config (the trainer, the callbacks, the loggers, the
trainer's plugins) against the signature of the class or function they name, before anything
is built.

These groups are untyped at composition (a ``+trainer.profiler=simple`` must stay possible), so
without this a wrong value starts the run and fails deep inside Lightning (``trainer.max_epochs=abc``
would run the sanity check and die on an ``AssertionError``). :func:`check_targets` raises a one-line
ValueError naming the key instead:

    trainer.max_epochs: expected int or None, got 'abc' (str)
    callbacks.model_checkpoint.save_topk: ModelCheckpoint takes no argument 'save_topk'

An argument is checked against the parameter's annotation (``typing.get_type_hints``): plain
types, ``Optional`` / unions, ``Literal``, lists and dicts of them, paths (a string fits), enums
(a member's name or value fits); a nested ``_target_`` node fits any annotation (it is checked as
a node of its own); annotations that cannot be read or are not one of these are not checked.
"""
from __future__ import annotations

import difflib
import enum
import inspect
import os
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from convac.errors import InvalidValueError


def check_targets(cfg: DictConfig) -> None:
    """Check every ``_target_`` node of ``cfg`` (at any depth) with :func:`check_target`."""
    for key, node in target_nodes(cfg):
        check_target(node, key)


def target_nodes(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """``(dotted key, node)`` of every dict node holding a ``_target_``, depth first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        children = ((f"{key}.{k}" if key else str(k), v) for k, v in node.items())
    elif isinstance(node, ListConfig):
        children = ((f"{key}[{i}]", v) for i, v in enumerate(node))
    else:
        return
    for child_key, child in children:
        yield from target_nodes(child, child_key)


def check_target(node: DictConfig, key: str) -> None:
    """Raise a ValueError naming ``key.<argument>`` if the ``_target_`` of ``node`` cannot be
    imported, takes no argument of that name, or takes a type the value does not fit."""
    path = node._target_
    try:
        target = get_object(path)
    except Exception as err:  # Hydra wraps import errors of every kind
        raise InvalidValueError(f"{key}._target_: cannot import {path!r} ({' '.join(str(err).split())})") from err
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    hints = _type_hints(target)
    values = OmegaConf.to_container(node, resolve=True)
    name = getattr(target, "__name__", path)
    for arg, value in values.items():
        if arg.startswith("_"):  # _target_, _partial_, _recursive_, _convert_, _args_
            continue
        if arg not in parameters and not takes_any:
            close = difflib.get_close_matches(arg, list(parameters), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its arguments: {', '.join(parameters)}"
            raise InvalidValueError(f"{key}.{arg}: {name} takes no argument {arg!r} ({hint})")
        if arg in hints and not fits(value, hints[arg]):
            raise InvalidValueError(f"{key}.{arg}: expected {describe(hints[arg])}, got {value!r} ({type(value).__name__})")


def _type_hints(target: Any) -> dict[str, Any]:
    """The evaluated annotations of ``target``'s constructor (of the function itself), or ``{}``
    when they cannot be evaluated."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation naming something only imported for type checkers
        return {}


def fits(value: Any, annotation: Any) -> bool:
    """Whether a plain config value (``None``, bool, int, float, str, list, dict) fits ``annotation``
    (see the module docstring; what cannot be told fits)."""
    if isinstance(value, Mapping) and "_target_" in value:
        return True  # built by instantiate; checked as a node of its own
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation in (bool, int, float, str):
        return _fits_plain(value, annotation)
    if inspect.isclass(origin):  # a generic: dict[str, int], list[int], Iterable[Logger], tuple[int, int]
        if issubclass(origin, Mapping):
            return isinstance(value, Mapping) and all(fits(v, args[-1]) for v in value.values())
        if not issubclass(origin, Iterable) or issubclass(origin, str):
            return True
        if not isinstance(value, list):
            return False
        if origin is tuple and Ellipsis not in args:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return all(fits(v, args[0]) for v in value)
    if inspect.isclass(annotation):
        if issubclass(annotation, os.PathLike):
            return isinstance(value, str)
        if issubclass(annotation, enum.Enum):
            return any(value in (m.name, m.value) for m in annotation)
        return isinstance(value, annotation)
    return True  # a TypeVar, a forward reference, ...: not checked


def _fits_plain(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def describe(annotation: Any) -> str:
    """``int or None``, ``one of 64, 32, '16-mixed'``, ``list of int``: an annotation in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):  # the literals of all members as one list, None last
        literals = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        # sorted: typing caches a Union under the member order it first saw, so that order
        # depends on what was imported before
        others = sorted(describe(a) for a in args if typing.get_origin(a) is not Literal and a is not type(None))
        words = others + ([describe(Literal[tuple(literals)])] if literals else []) + (["None"] if type(None) in args else [])
        return " or ".join(dict.fromkeys(words))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None):
        return "None"
    if inspect.isclass(origin) and args:
        return f"{origin.__name__} of {describe(args[-1] if issubclass(origin, Mapping) else args[0])}"
    return getattr(annotation, "__name__", str(annotation))
