"""Make the two small data sets of the README's "Your own data" example, as a user would have them:

* ``OUT/shapes/{circle,square,triangle}/NNNN.png``: RGB images (16x16 by default) of one filled
  shape of a random colour, size and position on a random dark background, one folder per class
  (the layout of torchvision's ``ImageFolder``): ``convac-train data=image_folder data.root=OUT/shapes``;
* ``OUT/survey.csv``: a table of integer-coded answers ``q1..qD`` in ``0..V-1`` with a header and
  a ``group`` label column, drawn from a mixture (one answer profile per group), with a share of
  the cells left empty (missing): ``convac-train data=table data.path=OUT/survey.csv
  data.label_column=group``.

    python scripts/make_own_data.py OUT [--per-class 1000] [--rows 3000] [--seed 0]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB image: a filled ``kind`` on a dark background."""
    background = tuple(int(v) for v in rng.integers(0, 96, 3))
    colour = tuple(int(v) for v in rng.integers(128, 256, 3))
    image = Image.new("RGB", (size, size), background)
    radius = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif kind == "square":
        half = radius * 0.85
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)], fill=colour)
    return image


def make_shapes(root: Path, per_class: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, size, rng).save(folder / f"{i:04d}.png")


def make_survey(path: Path, rows: int, columns: int, values: int, groups: int, missing: float, seed: int) -> float:
    """A latent-class table: group ``g`` uniform, each answer ``q_j ~ Categorical(profile[g, j])``
    with profiles drawn from a Dirichlet(0.5); each answer cell is empty with probability
    ``missing``. Returns the generating model's mean NLL of the written answers (nats per row,
    empty cells marginalized): the floor a density model of the answers can reach."""
    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(values, 0.5), size=(groups, columns))  # (G, D, V)
    group = rng.integers(0, groups, rows)
    cum = profiles[group].cumsum(-1)  # (N, D, V)
    answers = (rng.random((rows, columns, 1)) > cum).sum(-1).clip(max=values - 1)
    observed = rng.random((rows, columns)) >= missing
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"q{j + 1}" for j in range(columns)] + ["group"])
        for answer, seen, g in zip(answers, observed, group):
            writer.writerow([str(a) if s else "" for a, s in zip(answer, seen)] + [str(g)])
    # log P(x_obs) = log sum_g P(g) prod_{j observed} profile[g, j, x_j]
    per_cell = np.log(profiles[:, np.arange(columns), answers])  # (G, N, D)
    log_joint = np.log(1.0 / groups) + (per_cell * observed).sum(-1)  # (G, N)
    top = log_joint.max(0)
    return float(-(top + np.log(np.exp(log_joint - top).sum(0))).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write shapes/ and survey.csv into")
    parser.add_argument("--per-class", type=int, default=1000, help="images per shape (default 1000)")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--rows", type=int, default=3000, help="rows of the table (default 3000)")
    parser.add_argument("--columns", type=int, default=16, help="answer columns of the table (default 16)")
    parser.add_argument("--missing", type=float, default=0.1, help="share of empty answer cells (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_shapes(args.out / "shapes", args.per_class, args.size, args.seed)
    floor = make_survey(args.out / "survey.csv", args.rows, args.columns, values=4, groups=3, missing=args.missing,
                        seed=args.seed)
    print(f"{args.out / 'shapes'}: {len(SHAPES)} classes x {args.per_class} RGB images of {args.size}x{args.size}")
    print(f"{args.out / 'survey.csv'}: {args.rows} rows, {args.columns} answers in 0..3 ({args.missing:.0%} empty), "
          f"label 'group'; the generating mixture's NLL of the answers: {floor:.3f} nats per row")


if __name__ == "__main__":
    main()
