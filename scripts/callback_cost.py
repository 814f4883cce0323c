"""The entropy probe callback's whole cost per epoch in the default run, beside the probe alone.

    python scripts/callback_cost.py [--epochs 50] [--threads 1]
    python scripts/callback_cost.py --count-ops
    python scripts/callback_cost.py --paired /path/to/other/checkout [--pairs 300]

Runs ``convac-train`` (the default digits run, threads=1, in a temporary folder) with timers
around ``EntropyProbe.on_train_epoch_end`` (everything the callback does at an epoch: the probe,
its metrics, logging, the CSV histories) and around ``probe`` itself, and prints the medians and
the callback's share of the median epoch cycle (from one epoch-end to the next). No timer is in
the library: the methods are wrapped from outside.

``--count-ops`` counts instead the torch operations of one probe of the default run's model (as
the callback calls it, with its metrics and gap rows), after one warm-up probe: every call that
reaches ``__torch_function__`` (a :class:`torch.overrides.TorchFunctionMode`), grouped by the
functions of the library it was made in: the entry point (``probe``, ``EntropyReport.metrics``,
``EntropyReport.gap_rows``) and the three levels below it. Attribute reads
(``.shape``, ``.device``) are counted apart. The probe's fixed cost on a small model is about
this count times the dispatcher's overhead per operation (a few microseconds), so the count is a
measure that another job on the machine does not disturb.

``--paired PATH`` compares the callback of another checkout of convac (e.g. ``main``) with this
one's in one process: both packages are imported side by side (each with its own modules), each
callback probes the same weights of the default run's model and logs to its own CSV logger
(a row written at every call, as ``logger=csv``) and histories, and the two are called in
alternation, many pairs, with the same epoch and step. It prints the median of the per-pair
ratios of ``on_train_epoch_end``'s time (this / other), which another job on the machine slows
alike, and the largest relative difference between the files the two wrote (timing columns aside).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import convac
import convac.training.callbacks as callbacks
from convac.cli.train import main as train_main


def measure(epochs: int, threads: str) -> dict[str, float]:
    seconds: dict[str, list[float]] = {"callback": [], "probe": [], "ends": []}
    probe, on_end = callbacks.probe, callbacks.EntropyProbe.on_train_epoch_end

    def timed_probe(*args, **kwargs):
        start = time.perf_counter()
        try:
            return probe(*args, **kwargs)
        finally:
            seconds["probe"].append(time.perf_counter() - start)

    def timed_end(self, trainer, pl_module):
        start = time.perf_counter()
        on_end(self, trainer, pl_module)
        seconds["callback"].append(time.perf_counter() - start)
        seconds["ends"].append(start)

    callbacks.probe, callbacks.EntropyProbe.on_train_epoch_end = timed_probe, timed_end
    try:
        with tempfile.TemporaryDirectory() as folder:
            sys.argv = ["convac-train", f"threads={threads}", f"hydra.run.dir={folder}", f"trainer.max_epochs={epochs}", "test=false"]
            try:
                train_main()
            except SystemExit:
                pass
    finally:
        callbacks.probe, callbacks.EntropyProbe.on_train_epoch_end = probe, on_end
    cycles = [b - a for a, b in zip(seconds["ends"], seconds["ends"][1:])]
    callback, probe_s, cycle = (statistics.median(seconds[k]) if k != "cycle" else statistics.median(cycles)
                                for k in ("callback", "probe", "cycle"))
    return {"callback_ms": 1e3 * callback, "probe_ms": 1e3 * probe_s, "cycle_ms": 1e3 * cycle, "share": callback / cycle}


class OpCounter(TorchFunctionMode):
    """Counts every torch call by the library functions (in ``convac``) it was made in: the
    outermost one (the entry point) and the three below it ("(itself)" for a call made in the
    function above); comprehensions and lambdas count in the function around them."""

    LIBRARY = str(Path(convac.__file__).parent)
    INLINE = ("<listcomp>", "<dictcomp>", "<genexpr>", "<lambda>")  # counted in the function around them
    DEPTH = 4

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.attributes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "__get__":
            self.attributes += 1
        else:
            self.ops[self._callers()] += 1
        return func(*args, **(kwargs or {}))

    def _callers(self) -> tuple[str, ...]:
        frame, names = sys._getframe(2), []
        while frame is not None:
            name = frame.f_code.co_qualname
            if frame.f_code.co_filename.startswith(self.LIBRARY) and not name.endswith(self.INLINE):
                names.append(name)
            frame = frame.f_back
        return tuple((names[::-1] or ["(outside the library)"]) + ["(itself)"] * (self.DEPTH - 1))[: self.DEPTH]


def count_ops() -> None:
    """Print the torch calls of one probe of the default run's model, grouped by function."""
    from convac.cli.common import setup_data
    from convac.config import schema
    from convac.entropy import DEFAULT_NUM_SAMPLES, probe
    from convac.zoo import create_model
    from convac.zoo.entries import compose_train_config

    torch.set_num_threads(1)
    cfg = compose_train_config([])
    setup_data(cfg)
    kwargs = schema.to_kwargs(cfg.model)
    model = create_model(kwargs.pop("name"), **kwargs)

    def callback_work():  # what EntropyProbe.on_train_epoch_end asks of the library
        report = probe(model, num_samples=DEFAULT_NUM_SAMPLES, seed=0, bounds=False)
        report.metrics()
        report.gap_rows()

    callback_work()  # warm-up: lazily built state, first-call caches
    with OpCounter() as counter:
        callback_work()
    print(f"torch calls of one probe (default run's model, {DEFAULT_NUM_SAMPLES} samples, metrics and gap rows): "
          f"{sum(counter.ops.values())}, besides {counter.attributes} attribute reads")
    tree: dict = {}
    for names, n in counter.ops.items():
        node = tree
        for name in names:
            node = node.setdefault(name, {"": 0})
            node[""] += n
    _print_tree(tree)


def _print_tree(tree: dict, depth: int = 0) -> None:
    """Each name with its count, the largest first, the names below it indented."""
    for name, node in sorted(((k, v) for k, v in tree.items() if k), key=lambda item: -item[1][""]):
        print(f"{node['']:{6 + 4 * depth}d}  {'  ' * depth}{name}")
        if name != "(itself)":
            _print_tree(node, depth + 1)


def _import_convac(root: str) -> dict:
    """The modules of the convac package at ``root``, imported beside the ones already loaded
    (which are put back): ``{module name: module}``."""
    def package() -> dict:
        return {name: module for name, module in sys.modules.items() if name.split(".")[0] == "convac"}

    loaded = package()
    for name in loaded:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        import convac.training.callbacks  # noqa: F401  (and, through it, the rest of the package)
        import convac.zoo  # noqa: F401

        other = package()
    finally:
        sys.path.remove(root)
        for name in package():
            del sys.modules[name]
        sys.modules.update(loaded)
    if not other["convac"].__file__.startswith(str(Path(root).resolve())):
        raise SystemExit(f"--paired: no convac package under {root} (imported {other['convac'].__file__})")
    return other


def paired(root: str, pairs: int) -> None:
    """Print the median ratio of the callback's time, this checkout over the one at ``root``."""
    import csv
    import types

    from convac.cli.common import setup_data
    from convac.config import schema
    from convac.training.loggers import CSVLogger
    from convac.zoo import create_model
    from convac.zoo.entries import compose_train_config

    torch.set_num_threads(1)
    cfg = compose_train_config([])
    setup_data(cfg)
    kwargs = schema.to_kwargs(cfg.model)
    name = kwargs.pop("name")
    other = _import_convac(root)
    versions = {"other": (other["convac.zoo"].create_model, other["convac.training.loggers"].CSVLogger,
                          other["convac.training.callbacks"].EntropyProbe),
                "this": (create_model, CSVLogger, callbacks.EntropyProbe)}
    weights = None
    runs, seconds = {}, {key: [] for key in versions}
    with tempfile.TemporaryDirectory() as folder:
        for key, (make_model, make_logger, make_callback) in versions.items():
            model = make_model(name, **kwargs)
            weights = weights or model.state_dict()
            model.load_state_dict(weights)
            logger = make_logger(Path(folder, key), flush_logs_every_n_steps=1)
            logger.log_metrics({"train/loss": 1.0, "val/nll": 1.0, "epoch": 0}, step=0)  # metrics.csv's other columns
            trainer = types.SimpleNamespace(current_epoch=0, max_epochs=None, global_step=0, callback_metrics={},
                                            loggers=[logger], is_global_zero=True, datamodule=None)
            callback = make_callback(dirpath=str(Path(folder, key)), plot=False, figure_every_n_epochs=0)
            runs[key] = (callback, trainer, types.SimpleNamespace(model=model.train()))
        warm_up = 5
        for epoch in range(warm_up + pairs):
            for key in ("other", "this") if epoch % 2 else ("this", "other"):
                callback, trainer, module = runs[key]
                trainer.current_epoch, trainer.global_step = epoch, 20 * (epoch + 1)
                start = time.perf_counter()
                callback.on_train_epoch_end(trainer, module)
                if epoch >= warm_up:
                    seconds[key].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(seconds["this"], seconds["other"])]
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{pairs} pairs, one thread: median callback {1e3 * statistics.median(seconds['other']):.2f} ms at {root}, "
              f"{1e3 * statistics.median(seconds['this']):.2f} ms here; median ratio here / there "
              f"{statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})")
        for file in ("entropy.csv", "gaps.csv", "metrics.csv"):
            tables = [list(csv.DictReader(Path(folder, key, file).open(newline=""))) for key in ("other", "this")]
            worst = max((abs(float(a[k]) - float(b[k])) / abs(float(a[k]))
                         for a, b in zip(*tables) for k in a if a[k] != b[k] and "probe_s" not in k), default=0.0)
            print(f"{file}: {len(tables[0])} and {len(tables[1])} rows, largest relative difference {worst:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--count-ops", action="store_true", help="count the torch calls of one probe instead")
    parser.add_argument("--paired", metavar="PATH", help="time the callback against the checkout at PATH instead")
    parser.add_argument("--pairs", type=int, default=300, help="alternated calls of each (--paired)")
    args = parser.parse_args()
    if args.count_ops:
        count_ops()
        return
    if args.paired:
        paired(args.paired, args.pairs)
        return
    r = measure(args.epochs, args.threads)
    print(f"median per epoch: callback {r['callback_ms']:.1f} ms (probe {r['probe_ms']:.1f} ms), "
          f"epoch cycle {r['cycle_ms']:.1f} ms, callback share {100 * r['share']:.1f}%")


if __name__ == "__main__":
    main()
