"""The model zoo: architecture registry, named entries and their pretrained weights."""
from convac.zoo import entries as _entries  # noqa: F401  (registers the named entries)
from convac.zoo.pretrained import (
    ArchitectureMismatchError,
    CorruptWeightsError,
    HashMismatchError,
    PretrainedError,
    UnsafeCheckpointError,
)
from convac.zoo.registry import create_model, list_models, load_pretrained, register_model

__all__ = [
    "ArchitectureMismatchError",
    "CorruptWeightsError",
    "HashMismatchError",
    "PretrainedError",
    "UnsafeCheckpointError",
    "create_model",
    "list_models",
    "load_pretrained",
    "register_model",
]
