"""The model zoo: architecture registry, named entries, their pretrained weights, and saved
models in the Hugging Face Hub's layout (:mod:`convac.zoo.hub`)."""
from convac.zoo import entries as _entries  # noqa: F401  (registers the named entries)
from convac.zoo.hub import MissingExtraError, push_to_hub, save_pretrained
from convac.zoo.pretrained import (
    ArchitectureMismatchError,
    CorruptWeightsError,
    HashMismatchError,
    PretrainedError,
    UnsafeCheckpointError,
)
from convac.zoo.registry import create_model, is_model, list_models, load_pretrained, pretrained_cfg, register_model

__all__ = [
    "ArchitectureMismatchError",
    "CorruptWeightsError",
    "HashMismatchError",
    "MissingExtraError",
    "PretrainedError",
    "UnsafeCheckpointError",
    "create_model",
    "is_model",
    "list_models",
    "load_pretrained",
    "pretrained_cfg",
    "push_to_hub",
    "register_model",
    "save_pretrained",
]
