"""A CSV logger that keeps the rows of the run it resumes."""
from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from convac.training.atomic import atomic_write


class _ResumingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (keeping its columns) instead of deleting it.

    The first row the new run logs, at step ``s``, drops the file's rows at steps ``>= s``: those
    of a killed run after its last checkpoint, which the resumed run logs again (a fresh run in
    the same folder starts at step 0 and so starts a fresh file). Rewrites are atomic.
    """

    def _check_log_dir_exists(self) -> None:
        self._resuming = self._fs.isfile(self.metrics_file_path)
        if self._resuming:
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        if self._resuming:
            self._resuming = False
            self._rewrite(self.metrics_keys, before_step=self.metrics[-1]["step"])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(fieldnames)

    def _rewrite(self, fieldnames: list[str], before_step: int | None = None) -> None:
        """Rewrite the file under the header ``fieldnames``, keeping the rows at steps below
        ``before_step`` (all rows if None)."""
        path = Path(self.metrics_file_path)
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if before_step is None or int(r["step"]) < before_step]
        with atomic_write(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger writing ``metrics.csv`` into ``save_dir/name/version``, appending
    to the file a previous run left there (so resuming from ``last.ckpt`` in the same run
    folder keeps the earlier epochs' rows; the step column continues from the checkpoint, and
    rows a killed run logged after that checkpoint are replaced by the resumed run's).
    With ``flush_logs_every_n_steps=1`` (the ``logger=csv`` config) every row is on disk as soon
    as it is logged, so a killed run loses none."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
