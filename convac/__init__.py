"""convac: Convolutional Arithmetic Circuits (CP and HT ConvACs) in PyTorch.

Public names only; see ``DESIGN`` section 3 of the project documentation. The subpackages
``convac.callbacks``, ``convac.data``, ``convac.entropy``, ``convac.training`` and ``convac.zoo``
come with ``import convac``; ``convac.plotting`` (matplotlib) and ``convac.cli`` (Hydra entry
points) load on first access.
"""
import importlib

from convac import callbacks, data, entropy, training, zoo
from convac.errors import InvalidValueError, MissingFileError, UserError
from convac.leaves import Bernoulli, Categorical, Gaussian
from convac.model import ConvAC, CPConvAC, HTConvAC
from convac.training import ConvACModule
from convac.zoo import create_model, is_model, list_models, load_pretrained, register_model

_LAZY_SUBPACKAGES = ("cli", "plotting")


def __getattr__(name: str):
    """``convac.plotting`` and ``convac.cli``, imported on first access (PEP 562)."""
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"convac.{name}")
    raise AttributeError(f"module 'convac' has no attribute {name!r}")

__all__ = [
    "callbacks",
    "data",
    "entropy",
    "training",
    "zoo",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "ConvAC",
    "ConvACModule",
    "CPConvAC",
    "HTConvAC",
    "InvalidValueError",
    "MissingFileError",
    "UserError",
    "create_model",
    "is_model",
    "list_models",
    "load_pretrained",
    "register_model",
]
__version__ = "0.3.0.dev0"
