"""The entropy probe callback's whole cost per epoch in the default run, beside the probe alone.

    python scripts/callback_cost.py [--epochs 50] [--threads 1]
    python scripts/callback_cost.py --count-ops

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
    from convac.configs import schema
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--count-ops", action="store_true", help="count the torch calls of one probe instead")
    args = parser.parse_args()
    if args.count_ops:
        count_ops()
        return
    r = measure(args.epochs, args.threads)
    print(f"median per epoch: callback {r['callback_ms']:.1f} ms (probe {r['probe_ms']:.1f} ms), "
          f"epoch cycle {r['cycle_ms']:.1f} ms, callback share {100 * r['share']:.1f}%")


if __name__ == "__main__":
    main()
