"""The model zoo: architecture registry (and pretrained entries)."""
from convac.zoo.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
