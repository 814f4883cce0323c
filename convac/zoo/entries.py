"""The zoo's named entries: each is an ``experiment/zoo_<name>.yaml`` config, registered by name.

The experiment config is the single source of truth of an entry's architecture:
``create_model("ht_digits")`` composes ``experiment=zoo_ht_digits`` with Hydra and builds the
model of its ``model`` node, exactly as ``convac-train experiment=zoo_ht_digits`` does. It is
built without data, so a zoo experiment pins ``data.in_shape`` (which training checks against
the files) instead of reading it from them. The
shipped weights and card (``scripts/train_zoo.py``) are derived from that run.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

from omegaconf import DictConfig
from torch import nn

from convac.errors import InvalidValueError
from convac.model import Architecture
from convac.zoo.cards import local_data_key
from convac.zoo.registry import create_model, register_model


@dataclass(frozen=True)
class ZooEntry:
    """A named architecture trained by ``experiment=zoo_<name>``."""

    name: str
    description: str

    @property
    def experiment(self) -> str:
        return f"zoo_{self.name}"

    def config(self, overrides: Sequence[str] = ()) -> DictConfig:
        """The composed ``convac-train`` config of this entry (plus ``overrides``)."""
        return compose_train_config([f"experiment={self.experiment}", *overrides])

    @cached_property
    def local_data_key(self) -> str | None:
        """The data key that names a local folder or file (``root`` or ``path``), None for
        bundled data (read once: it composes the entry's config)."""
        return local_data_key(self.config().data.keys())  # keys(): `in` is False for a ??? value

    @property
    def needs_data_root(self) -> bool:
        """Whether the entry's data is read from a local folder or file (:attr:`local_data_key`)."""
        return self.local_data_key is not None

    def architecture(self) -> Architecture:
        """``(model_name, model_kwargs)`` of the entry's ``model`` config node."""
        return Architecture(*json.loads(_architecture_json(self.experiment)))


ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("cp_digits", "CP ConvAC density model P(x) of the 8x8 digits (categorical leaves)"),
        ZooEntry("ht_digits", "HT ConvAC density model P(x) of the 8x8 digits (categorical leaves)"),
        ZooEntry("ht_digits_classifier", "HT ConvAC classifier P(y | x) of the 8x8 digits, trained with the hybrid objective"),
        ZooEntry("ht_nltcs", "HT ConvAC density model of the DEBD set nltcs (16 binary variables)"),
        ZooEntry("ht_plants", "HT ConvAC density model of the DEBD set plants (69 binary variables)"),
        ZooEntry("ht_pumsb_star", "HT ConvAC density model of the DEBD set pumsb_star (163 binary variables)"),
        ZooEntry("ht_mnist", "HT ConvAC density model P(x) of MNIST (t10k split: first 8,000 train, last 2,000 test), "
                 "shared leaves, trained by EM"),
        ZooEntry("ht_mnist_classifier", "HT ConvAC classifier P(y | x) of MNIST (t10k split: first 8,000 train, "
                 "last 2,000 test), hybrid objective, shared leaves; classifies with missing pixels marginalized"),
    )
}


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """The ``train`` config of :mod:`convac.configs` composed with ``overrides`` (not resolved).

    Inside a running Hydra application of convac (whose search path is ``convac.configs``)
    its Hydra instance is used; otherwise one is initialized for the call.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import convac.config.schema  # noqa: F401  (stores the structured schemas the yaml files extend)

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=list(overrides))
    with initialize_config_module("convac.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@functools.cache
def _architecture_json(experiment: str) -> str:
    """``[model_name, model_kwargs]`` of an experiment config, as JSON (cached; a copy per use)."""
    from convac.config import schema

    kwargs = schema.to_kwargs(compose_train_config([f"experiment={experiment}"]).model)
    if kwargs["in_shape"] is None:  # built without data: the shape cannot be read from it
        raise InvalidValueError(f"experiment={experiment} leaves data.in_shape to be read from the data; a zoo entry "
                         f"pins it (data.in_shape: [C, H, W]) so that its model is built without data")
    return json.dumps([kwargs.pop("name"), kwargs])


def _builder(entry: ZooEntry) -> Callable[..., nn.Module]:
    def build(**overrides) -> nn.Module:
        name, kwargs = entry.architecture()
        return create_model(name, **{**kwargs, **overrides})

    build.__doc__ = f"{entry.description}: the model of experiment={entry.experiment}."
    return build


for _entry in ENTRIES.values():
    register_model(_builder(_entry), name=_entry.name)
