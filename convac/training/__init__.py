"""Lightning training: the ConvACModule and the run-folder CSV logger."""
from convac.training.loggers import CSVLogger
from convac.training.module import ConvACModule

__all__ = ["CSVLogger", "ConvACModule"]
