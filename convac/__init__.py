"""convac: Convolutional Arithmetic Circuits (CP and HT ConvACs) in PyTorch.

Public names only; see ``DESIGN`` section 3 of the project documentation.
"""
from convac.leaves import Bernoulli, Categorical, Gaussian
from convac.model import ConvAC, CPConvAC, HTConvAC
from convac.training import ConvACModule
from convac.zoo import create_model, list_models, load_pretrained, register_model

__all__ = [
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "ConvAC",
    "ConvACModule",
    "CPConvAC",
    "HTConvAC",
    "create_model",
    "list_models",
    "load_pretrained",
    "register_model",
]
__version__ = "0.1.0"
