"""Lightning callbacks of convac."""
from convac.training.callbacks import EntropyProbe
from convac.training.guards import FiniteGuard

__all__ = ["EntropyProbe", "FiniteGuard"]
