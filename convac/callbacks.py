"""Lightning callbacks of convac."""
from convac.training.callbacks import EntropyProbe
from convac.training.guards import FiniteGuard
from convac.training.pictures import Pictures

__all__ = ["EntropyProbe", "FiniteGuard", "Pictures"]
