"""EntropyProbe: a Lightning callback that measures the scaling law every epoch (DESIGN section 2)."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L

from convac.entropy import DEFAULT_NUM_SAMPLES, probe
from convac.training.atomic import atomic_write
from convac.validation import check_positive_float, check_positive_int


class EntropyProbe(L.Callback):
    """Run :func:`convac.entropy.probe` on ``pl_module.model`` at the end of training epochs.

    Logs every metric of :meth:`EntropyReport.metrics` (``entropy/H{l}``, ``scaling/C{l}``, ...)
    and ``entropy/probe_share`` (the probe's share of the epoch's wall time, training and
    validation included), and appends one row per probed epoch to ``<dirpath>/entropy.csv``.
    The sampling seed is fixed, so the curves show the model changing rather than Monte Carlo
    noise. Every rank computes the same values (same weights, same seed); only global rank 0
    writes the file.
    On a resume, rows of epochs at or after the one being written are replaced, so the file
    keeps its history without duplicates. At the end of fitting, ``entropy.png`` is drawn.

    Args:
        every_n_epochs: probe every ``n`` epochs (and always after the last one).
        num_samples: exact samples per probe.
        seed: the sampling seed, the same at every epoch.
        bin_width: quantization step for Gaussian leaves; ``"auto"`` takes the datamodule's
            ``bin_width`` attribute when there is one; ignored for discrete leaves.
        dirpath: the run folder (default: the trainer's ``default_root_dir``).
        plot: draw ``entropy.png`` from the history at the end of fitting.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        seed: int = 0,
        bin_width: float | str | None = "auto",
        dirpath: str | None = None,
        plot: bool = True,
    ) -> None:
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("num_samples", num_samples, minimum=2)
        if bin_width not in ("auto", None):
            check_positive_float("bin_width", bin_width)  # or 'auto' or None
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.bin_width = bin_width
        self.dirpath = dirpath
        self.plot = plot
        self._epoch_start = time.perf_counter()

    def csv_path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / "entropy.csv"

    def _resolve_bin_width(self, trainer: L.Trainer) -> float | None:
        if self.bin_width == "auto":
            return getattr(trainer.datamodule, "bin_width", None) if trainer.datamodule is not None else None
        return self.bin_width

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_seconds = time.perf_counter() - self._epoch_start  # training and validation
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        report = probe(pl_module.model, num_samples=self.num_samples, seed=self.seed,
                       bin_width=self._resolve_bin_width(trainer))
        metrics = report.metrics()
        metrics["entropy/probe_share"] = report.seconds / (epoch_seconds + report.seconds)
        # every rank holds the same values: their mean is that value (and Lightning wants DDP epoch logs synced)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self._write_row(self.csv_path(trainer), {"epoch": epoch, "step": trainer.global_step, **metrics})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.csv_path(trainer)
        if self.plot and trainer.is_global_zero and path.exists():
            from convac.plotting import plot_entropy

            plot_entropy(path, path.with_suffix(".png"))

    @staticmethod
    def _write_row(path: Path, row: dict[str, float]) -> None:
        """Rewrite ``path`` with the earlier epochs' rows and ``row``, atomically."""
        rows = []
        if path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
