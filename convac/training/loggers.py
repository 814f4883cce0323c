"""A CSV logger that keeps the rows of the run it resumes."""
from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ResumingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (keeping its columns) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger writing ``metrics.csv`` into ``save_dir/name/version``, appending
    to the file a previous run left there (so resuming from ``last.ckpt`` in the same run
    folder keeps the earlier epochs' rows; the step column continues from the checkpoint)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
