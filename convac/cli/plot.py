"""``convac-plot``: figures as PNG, one mode per call.

* ``convac-plot RUN_DIR``: the figures of a run folder (``entropy.png`` from ``entropy.csv``,
  ``gaps.png`` from ``gaps.csv``);
* ``convac-plot --sweep DIR``: every run of a sweep (``convac-train -m ...``) as ``scaling.csv``,
  the fitted laws ``scaling.json`` and ``scaling.png``, in ``DIR``.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from convac.plotting import plot_run


def run_mode(path: str) -> str:
    """Figures of one run folder; prints their paths."""
    return "\n".join(str(p) for p in plot_run(path))


def sweep_mode(path: str) -> str:
    """The scaling table, fitted laws and figure of a sweep folder; prints the summary and paths."""
    from convac.sweep import write_sweep

    paths, text = write_sweep(path)
    return "\n".join([text, *map(str, paths)])


# argparse destination -> what that mode does with its one path argument
MODES: dict[str, Callable[[str], str]] = {"run_dir": run_mode, "sweep": sweep_mode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convac-plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("run_dir", nargs="?", help="a run folder of convac-train (holding entropy.csv)")
    mode.add_argument("--sweep", metavar="DIR", help="a sweep folder of convac-train -m (run folders at any depth)")
    args = parser.parse_args(argv)
    dest, value = next((d, getattr(args, d)) for d in MODES if getattr(args, d) is not None)
    try:
        print(MODES[dest](value))
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"convac-plot: error: {err}\n")


if __name__ == "__main__":
    main()
