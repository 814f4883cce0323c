"""Lightning callbacks of convac."""
from convac.training.callbacks import EntropyProbe

__all__ = ["EntropyProbe"]
