"""The entropy probe callback's whole cost per epoch in the default run, beside the probe alone.

    python scripts/callback_cost.py [--epochs 50] [--threads 1]

Runs ``convac-train`` (the default digits run, threads=1, in a temporary folder) with timers
around ``EntropyProbe.on_train_epoch_end`` (everything the callback does at an epoch: the probe,
its metrics, logging, the CSV histories) and around ``probe`` itself, and prints the medians and
the callback's share of the median epoch cycle (from one epoch-end to the next). No timer is in
the library: the methods are wrapped from outside.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args()
    r = measure(args.epochs, args.threads)
    print(f"median per epoch: callback {r['callback_ms']:.1f} ms (probe {r['probe_ms']:.1f} ms), "
          f"epoch cycle {r['cycle_ms']:.1f} ms, callback share {100 * r['share']:.1f}%")


if __name__ == "__main__":
    main()
