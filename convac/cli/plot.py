"""``convac-plot RUN_DIR``: draw the entropy and scaling-law figures of a run folder as PNG."""
from __future__ import annotations

import argparse

from convac.plotting import plot_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convac-plot", description=__doc__)
    parser.add_argument("run_dir", help="a run folder of convac-train (holding entropy.csv)")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run_dir)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"convac-plot: error: {err}\n")
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
