"""A CSV logger that keeps the rows of the run it resumes, on Lightning's public ``Logger`` API."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch import Tensor

from convac.training.atomic import CsvHistory
from convac.validation import check_positive_int


class CSVLogger(Logger):
    """Writes ``metrics.csv`` (one row per logged step, a ``step`` column and one column per
    metric, sorted, as Lightning's CSVLogger) and ``hparams.yaml`` into
    ``log_dir = save_dir/name/version``, appending to the ``metrics.csv`` a previous run left
    there, so resuming from ``last.ckpt`` in the same run folder keeps the earlier epochs' rows.

    The first row this logger writes, at step ``s``, drops the file's rows at steps ``>= s``:
    those of a killed run after its last checkpoint, which the resumed run logs again (a fresh run
    in the same folder starts at step 0, hence a fresh file). Rows are appended while the columns
    stay the same; a new column rewrites the file, atomically. With
    ``flush_logs_every_n_steps=1`` (the ``logger=csv`` config) every row is on disk as soon as
    it is logged, so a killed run loses none. Only global rank 0 writes.

    Args:
        save_dir: the folder of the logs (the run folder).
        name: a subfolder of ``save_dir`` ("" for none).
        version: a subfolder of ``save_dir/name`` ("" for none; an int ``n`` is ``version_n``).
        flush_logs_every_n_steps: rows kept in memory before they are written.
    """

    def __init__(self, save_dir: str | Path, name: str = "", version: int | str = "",
                 flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._name = name
        self._version = version
        self.flush_logs_every_n_steps = check_positive_int("flush_logs_every_n_steps", flush_logs_every_n_steps)
        self._rows: list[dict[str, float]] = []  # logged, not yet written
        self._num_logged = 0
        self._history = CsvHistory(self.metrics_path, "step", sort_columns=True)

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version``: where ``metrics.csv`` and ``hparams.yaml`` go."""
        version = f"version_{self._version}" if isinstance(self._version, int) else self._version
        return str(Path(self._save_dir, self._name, version))

    @property
    def metrics_path(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        """Write ``params`` (plain values: the module's and the datamodule's hyperparameters) to
        ``hparams.yaml``."""
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(dict(params)), Path(self.log_dir) / "hparams.yaml")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float | Tensor], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = self._num_logged if step is None else step
        self._rows.append(row)
        self._num_logged += 1
        if len(self._rows) >= self.flush_logs_every_n_steps:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write the rows logged since the last save (:class:`CsvHistory` keyed by ``step``)."""
        rows, self._rows = self._rows, []
        self._history.write(rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
