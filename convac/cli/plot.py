"""``convac-plot``: figures as PNG, one mode per call.

* ``convac-plot RUN_DIR``: the figures of a run folder (``entropy.png`` from ``entropy.csv``,
  ``gaps.png`` from ``gaps.csv``);
* ``convac-plot --sweep DIR``: every run of a sweep (``convac-train -m ...``) as ``scaling.csv``,
  the fitted laws ``scaling.json`` and ``scaling.png``, in ``DIR``;
* ``convac-plot --samples NAME_OR_CKPT``: ``samples.png`` and ``inpaint.png`` of a zoo entry or a
  weight file (``.ckpt`` of convac-train, ``.safetensors``) in ``--out`` (default: here). The
  originals are test images of the data the model was trained on (``--data-root DIR`` for data
  read from a local folder); without data, the model's own samples.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convac.errors import UserError
from convac.plotting import plot_run


def run_mode(path: str, args: argparse.Namespace) -> str:
    """Figures of one run folder; prints their paths."""
    return "\n".join(str(p) for p in plot_run(path))


def sweep_mode(path: str, args: argparse.Namespace) -> str:
    """The scaling table, fitted laws and figure of a sweep folder; prints the summary and paths."""
    from convac.sweep import write_sweep

    paths, text = write_sweep(path)
    return "\n".join([text, *map(str, paths)])


def samples_mode(name_or_path: str, args: argparse.Namespace) -> str:
    """``samples.png`` and ``inpaint.png`` of a zoo entry or weight file, in ``args.out``."""
    from convac.data import create_datamodule
    from convac.pictures import check_image_model, pick_images, write_pictures
    from convac.zoo import load_pretrained
    from convac.zoo.cards import with_local_data

    model = load_pretrained(name_or_path)
    check_image_model(model, name_or_path)
    trained_on, lines = training_data(name_or_path), []
    settings = None if trained_on is None else with_local_data(trained_on, args.data_root)
    x = None
    if settings is None:
        lines.append(f"no test images for {name_or_path}" + (" (pass --data-root DIR)" if trained_on else "")
                     + ": inpaint.png completes the model's own samples")
    else:
        x = pick_images(*create_datamodule(**settings).split("test"))
    name = name_or_path if Path(name_or_path).suffix not in (".ckpt", ".safetensors") else Path(name_or_path).name
    return "\n".join(lines + [str(p) for p in write_pictures(model, args.out, x, name=name, source="test images")])


def training_data(name_or_path: str) -> dict[str, Any] | None:
    """The data settings (``create_datamodule`` kwargs) a model was trained on: a zoo entry's card
    (``root`` None for data in a local folder), a ``.ckpt``'s datamodule hyperparameters; None
    for a ``.safetensors`` file, which stores none."""
    from convac.zoo.cards import load_cards
    from convac.zoo.pretrained import load_checkpoint_dict

    cards = load_cards()
    if name_or_path in cards:
        return dict(cards[name_or_path].data)
    path = Path(name_or_path)
    if path.suffix == ".ckpt":
        saved = load_checkpoint_dict(path.read_bytes(), str(path)).get("datamodule_hyper_parameters")
        return dict(saved) if saved else None
    return None


# argparse destination -> what that mode does with its one argument (and the shared options)
MODES: dict[str, Callable[[str, argparse.Namespace], str]] = {"run_dir": run_mode, "sweep": sweep_mode,
                                                               "samples": samples_mode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convac-plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("run_dir", nargs="?", help="a run folder of convac-train (holding entropy.csv)")
    mode.add_argument("--sweep", metavar="DIR", help="a sweep folder of convac-train -m (run folders at any depth)")
    mode.add_argument("--samples", metavar="NAME_OR_CKPT",
                      help="samples.png and inpaint.png of a zoo entry, a .ckpt or a .safetensors file")
    parser.add_argument("--out", default=".", help="--samples: the folder of the pictures (default: here)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="--samples: the data folder of a model trained on local files (MNIST, ...)")
    args = parser.parse_args(argv)
    dest, value = next((d, getattr(args, d)) for d in MODES if getattr(args, d) is not None)
    try:
        print(MODES[dest](value, args))
    except UserError as err:
        parser.exit(2, f"convac-plot: error: {err}\n")


if __name__ == "__main__":
    main()
