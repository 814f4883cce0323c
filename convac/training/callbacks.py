"""EntropyProbe: a Lightning callback that measures the scaling law every epoch (DESIGN section 2)."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from convac.entropy import DEFAULT_NUM_SAMPLES, probe
from convac.errors import InvalidValueError
from convac.training.atomic import CsvHistory
from convac.validation import check_positive_float, check_positive_int


class EntropyProbe(L.Callback):
    """Run :func:`convac.entropy.probe` on ``pl_module.model`` at the end of training epochs.

    Logs every metric of :meth:`EntropyReport.metrics` (``entropy/H{l}``, ``scaling/C{l}``, ...)
    and ``entropy/probe_share`` to every logger (TensorBoard: scalars), and writes two histories into
    the run folder: ``entropy.csv``, one row per probed epoch, and ``gaps.csv``, the gap of every
    mapping per probed epoch in long format (``epoch, level, row, column, gap, se``; see
    :meth:`EntropyReport.gap_rows`: level ``l`` holds the sum nodes of fusion layer ``l`` on grid
    ``l - 1``, level ``L + 1`` the root at ``(0, 0)``, and an epoch's gaps add up to
    ``entropy/H_X_tele - entropy/H0``). ``entropy/probe_share`` is the callback's share of the
    wall time of an epoch, everything counted: its cost (the probe and its metrics now, plus the
    writing and logging it did at its previous run) over that cost plus the epoch's own time
    (all the trainer did since the callback last finished, Lightning's epoch-end work and the
    other callbacks included, per epoch when it probes every ``n``; the first epoch of a fit
    counts from the start of training, or of a resume). The sampling seed is fixed, so the curves show the model
    changing rather than Monte Carlo noise. Every rank computes the same values (same weights, same
    seed); only global rank 0 writes the files and draws figures.
    On a resume, rows of epochs at or after the one being written are replaced, so the files
    keep their history without duplicates. At the end of fitting, ``entropy.png`` and ``gaps.png``
    are drawn; loggers that take figures (TensorBoard's ``add_figure``) also get both figures every
    ``figure_every_n_epochs`` epochs.

    Args:
        every_n_epochs: probe every ``n`` epochs (and always after the last one: at ``max_epochs``,
            or at the end of a fit that early stopping or another callback ended sooner).
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
            raise InvalidValueError(f"figure_every_n_epochs must be >= 0 (0: never), got {figure_every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.bin_width = bin_width
        self.dirpath = dirpath
        self.plot = plot
        self.figure_every_n_epochs = figure_every_n_epochs
        self._last_finish = time.perf_counter()  # when this callback last finished (or training started)
        self._last_epoch = -1  # the epoch it last probed
        self._bookkeeping_seconds = 0.0  # the writing and logging of its last probe
        self._files: tuple[CsvHistory, CsvHistory] | None = None

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the first epoch of this fit counts from here (a mid-epoch resume: from the resume)
        self._last_finish, self._last_epoch = time.perf_counter(), trainer.current_epoch - 1
        self._bookkeeping_seconds = 0.0
        self._files = None  # this fit's first write drops the rows of a killed run after its checkpoint

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            self._probe(trainer, pl_module, epoch, last)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a fit stopped before max_epochs (EarlyStopping, which may run after this callback at the
        # epoch's end): probe its last completed epoch if the schedule skipped it
        epoch = trainer.current_epoch - 1
        if epoch > self._last_epoch:
            self._probe(trainer, pl_module, epoch, last=True)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, last: bool) -> None:
        """Probe the model after ``epoch``, log the metrics and append them to the histories."""
        started = time.perf_counter()
        epoch_seconds = (started - self._last_finish) / max(1, epoch - self._last_epoch)
        report = probe(pl_module.model, num_samples=self.num_samples, seed=self.seed,
                       bin_width=self._resolve_bin_width(trainer), bounds=False)  # no metric uses the bounds
        metrics = report.metrics()
        cost = time.perf_counter() - started + self._bookkeeping_seconds
        metrics["entropy/probe_share"] = cost / (epoch_seconds + cost)
        bookkeeping_start = time.perf_counter()
        self._log(trainer, metrics, epoch)
        if trainer.is_global_zero:
            histories = self._histories(trainer)
            histories[0].write([{"epoch": epoch, "step": trainer.global_step, **metrics}])
            histories[1].write({"epoch": epoch, **r} for r in report.gap_rows())
            every = self.figure_every_n_epochs
            if every and ((epoch + 1) % every == 0 or last):
                self._log_figures(trainer)
        self._last_finish, self._last_epoch = time.perf_counter(), epoch
        self._bookkeeping_seconds = self._last_finish - bookkeeping_start

    @staticmethod
    def _log(trainer: L.Trainer, metrics: dict[str, float], epoch: int) -> None:
        """Hand ``metrics`` to every logger at the global step (as Lightning's own
        ``LearningRateMonitor`` does) and to ``trainer.callback_metrics``, where monitors such as
        ``EarlyStopping`` and the CLI's summary read them. ``LightningModule.log_dict`` would
        cost about twice the probe itself for the default model's 40-odd metrics (the callback's
        and the probe's time: ``python scripts/callback_cost.py``); every rank holds the same
        values, so there is nothing to reduce across processes."""
        trainer.callback_metrics.update(zip(metrics, torch.tensor(list(metrics.values())).unbind()))
        row, step = {**metrics, "epoch": epoch}, trainer.global_step  # one row for all, as Lightning does
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)

    def _histories(self, trainer: L.Trainer) -> tuple[CsvHistory, CsvHistory]:
        """``entropy.csv`` and ``gaps.csv`` (:class:`CsvHistory` keyed by epoch: the first write of
        a fit drops the rows a killed run wrote at or after the epoch it resumes at)."""
        if self._files is None:
            self._files = (CsvHistory(self.csv_path(trainer), "epoch"), CsvHistory(self.gaps_path(trainer), "epoch"))
        return self._files

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
        if gaps.exists():  # absent beside entropy.csv in a resumed run folder that lacked it
            plot_gaps(gaps, gaps.with_suffix(".png"))

