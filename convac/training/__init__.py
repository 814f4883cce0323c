"""Lightning training: the ConvACModule, the run-folder CSV logger, the finite-value guard and
atomic checkpoint writes."""
from convac.training.atomic import AtomicCheckpointIO
from convac.training.guards import FiniteGuard, NonFiniteError
from convac.training.loggers import CSVLogger
from convac.training.module import ConvACModule

__all__ = ["AtomicCheckpointIO", "CSVLogger", "ConvACModule", "FiniteGuard", "NonFiniteError"]
