"""EntropyProbe: a Lightning callback that measures the scaling law every epoch (DESIGN section 2)."""
from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L

from convac.entropy import DEFAULT_NUM_SAMPLES, probe
from convac.training.atomic import write_csv_atomically
from convac.validation import check_positive_float, check_positive_int


class EntropyProbe(L.Callback):
    """Run :func:`convac.entropy.probe` on ``pl_module.model`` at the end of training epochs.

    Logs every metric of :meth:`EntropyReport.metrics` (``entropy/H{l}``, ``scaling/C{l}``, ...)
    and ``entropy/probe_share`` (the probe's share of the epoch's wall time, training and
    validation included) to every logger (TensorBoard: scalars), and writes two histories into
    the run folder: ``entropy.csv``, one row per probed epoch, and ``gaps.csv``, the gap of every
    mapping per probed epoch in long format (``epoch, level, row, column, gap, se``; see
    :meth:`EntropyReport.gap_rows`: level ``l`` holds the sum nodes of fusion layer ``l`` on grid
    ``l - 1``, level ``L + 1`` the root at ``(0, 0)``, and an epoch's gaps add up to
    ``entropy/H_X_tele - entropy/H0``). The sampling seed is fixed, so the curves show the model
    changing rather than Monte Carlo noise. Every rank computes the same values (same weights, same
    seed); only global rank 0 writes the files and draws figures.
    On a resume, rows of epochs at or after the one being written are replaced, so the files
    keep their history without duplicates. At the end of fitting, ``entropy.png`` and ``gaps.png``
    are drawn; loggers that take figures (TensorBoard's ``add_figure``) also get both figures every
    ``figure_every_n_epochs`` epochs.

    Args:
        every_n_epochs: probe every ``n`` epochs (and always after the last one).
        num_samples: exact samples per probe.
        seed: the sampling seed, the same at every epoch.
        bin_width: quantization step for Gaussian leaves; ``"auto"`` takes the datamodule's
            ``bin_width`` attribute when there is one; ignored for discrete leaves.
        dirpath: the run folder (default: the trainer's ``default_root_dir``).
        plot: draw ``entropy.png`` and ``gaps.png`` from the histories at the end of fitting.
        figure_every_n_epochs: hand the figures to the loggers at the probed epochs whose number
            (counting from 1) is a multiple of this, and after the last epoch; 0: never.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        seed: int = 0,
        bin_width: float | str | None = "auto",
        dirpath: str | None = None,
        plot: bool = True,
        figure_every_n_epochs: int = 10,
    ) -> None:
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("num_samples", num_samples, minimum=2)
        if bin_width not in ("auto", None):
            check_positive_float("bin_width", bin_width)  # or 'auto' or None
        if figure_every_n_epochs < 0:
            raise ValueError(f"figure_every_n_epochs must be >= 0 (0: never), got {figure_every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.bin_width = bin_width
        self.dirpath = dirpath
        self.plot = plot
        self.figure_every_n_epochs = figure_every_n_epochs
        self._epoch_start = time.perf_counter()

    def csv_path(self, trainer: L.Trainer) -> Path:
        """``entropy.csv`` in the run folder."""
        return Path(self.dirpath or trainer.default_root_dir) / "entropy.csv"

    def gaps_path(self, trainer: L.Trainer) -> Path:
        """``gaps.csv`` in the run folder."""
        return self.csv_path(trainer).with_name("gaps.csv")

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
                       bin_width=self._resolve_bin_width(trainer), bounds=False)  # no metric uses the bounds
        metrics = report.metrics()
        metrics["entropy/probe_share"] = report.seconds / (epoch_seconds + report.seconds)
        # every rank holds the same values: their mean is that value (and Lightning wants DDP epoch logs synced)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            write_epoch_rows(self.csv_path(trainer), epoch, [{"epoch": epoch, "step": trainer.global_step, **metrics}])
            write_epoch_rows(self.gaps_path(trainer), epoch, ({"epoch": epoch, **r} for r in report.gap_rows()))
            every = self.figure_every_n_epochs
            if every and ((epoch + 1) % every == 0 or last):
                self._log_figures(trainer)

    def _log_figures(self, trainer: L.Trainer) -> None:
        """Hand ``entropy`` and ``gaps`` figures of the histories so far to every logger whose
        experiment has ``add_figure`` (TensorBoard's ``SummaryWriter``), at the global step."""
        experiments = (getattr(logger, "experiment", None) for logger in trainer.loggers)  # not every logger has one
        writers = [experiment for experiment in experiments if hasattr(experiment, "add_figure")]
        if not writers:
            return
        from convac.plotting import entropy_figure, gaps_figure, read_gaps, read_history

        draw = {"figures/entropy": lambda: entropy_figure(read_history(self.csv_path(trainer))),
                "figures/gaps": lambda: gaps_figure(read_gaps(self.gaps_path(trainer)))}
        for tag, figure in draw.items():
            for writer in writers:
                writer.add_figure(tag, figure(), global_step=trainer.global_step, close=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.plot and trainer.is_global_zero and self.csv_path(trainer).exists()):
            return
        from convac.plotting import plot_entropy, plot_gaps

        path, gaps = self.csv_path(trainer), self.gaps_path(trainer)
        plot_entropy(path, path.with_suffix(".png"))
        if gaps.exists():  # a run resumed from a version that wrote no gaps.csv has none
            plot_gaps(gaps, gaps.with_suffix(".png"))


def write_epoch_rows(path: Path, epoch: int, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite the history ``path`` (a CSV with an ``epoch`` column) with its rows of the epochs
    before ``epoch`` followed by ``rows``, atomically: a resumed run replaces the rows a killed run
    wrote after its last checkpoint instead of duplicating them. The header is the union of the
    columns, in order of appearance."""
    kept = []
    if path.exists():
        with path.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
    rows = kept + list(rows)
    write_csv_atomically(path, list(dict.fromkeys(k for r in rows for k in r)), rows)
