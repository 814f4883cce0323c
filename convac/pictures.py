"""Pictures of what an image model does: a grid of its samples (``samples.png``; one row per
class for classifiers) and its completions of masked images (``inpaint.png``: originals, masked
inputs, completions by sampling and by MPE, for a few masks).

The pictures are pixel mosaics drawn with Pillow: every image is enlarged by an integer factor
(:func:`cell_scale`, nearest neighbour, so pixels stay sharp), cells are separated by
:data:`GAP` pixels, a :data:`LABEL_WIDTH`-pixel column on the left names each row and a
:data:`TITLE_HEIGHT`-pixel band on top holds the title. A picture of ``rows x cols`` images of
shape ``(C, H, W)`` is therefore exactly

    width  = LABEL_WIDTH + cols * (cell_w + GAP) + GAP,  cell_w = W * cell_scale(H, W)
    height = TITLE_HEIGHT + rows * (cell_h + GAP) + GAP,  cell_h = H * cell_scale(H, W)

pixels. Values are shown as grey levels (3 channels: as RGB; other channel counts: their mean),
scaled from the leaves' range (categorical: ``0 .. num_values - 1``; Gaussian: the 1st to 99th
percentile of the values shown); missing variables are painted :data:`MISSING_COLOR`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from convac.errors import InvalidValueError
from convac.model import ConvAC

GAP = 2  # pixels between cells
LABEL_WIDTH = 112  # the row-label column (pixels)
TITLE_HEIGHT = 18  # the title band (pixels)
CELL_PIXELS = 56  # an image is enlarged to about this many pixels along its longer side
MISSING_COLOR = (0.85, 0.1, 0.1)  # RGB in [0, 1]
BACKGROUND = (255, 255, 255)
NUM_COLUMNS = 10  # samples per row of samples.png
NUM_ORIGINALS = 8  # images (columns) of inpaint.png


def cell_scale(h: int, w: int) -> int:
    """The integer enlargement of an ``h x w`` image: about :data:`CELL_PIXELS` along its
    longer side, at least 1."""
    return max(1, CELL_PIXELS // max(h, w))


def check_image_model(model: ConvAC, label: str = "the model") -> None:
    """Raise a ValueError if ``model`` takes sequences ``(1, 1, D)`` rather than images: there
    is nothing to draw."""
    if model.in_shape[1] == 1:
        raise InvalidValueError(f"{label} takes sequences of shape {list(model.in_shape)}, not images: no pictures to draw")


# ------------------------------------------------------------------------ what the model does
@dataclass
class Row:
    """One row of a picture: images ``(n, C, H, W)`` (NaN or ``missing`` marks missing entries)."""

    label: str
    images: Tensor
    missing: Tensor | None = None


def masks(x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """The masks of ``inpaint.png`` for images ``x`` (n, C, H, W), bool like ``x`` (True =
    missing): the bottom half, 50% of the pixels i.i.d. (seeded by ``generator``, every channel
    of a pixel together) and a centred square of half the image's side."""
    n, c, h, w = x.shape
    rows, cols = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    side_h, side_w = max(1, h // 2), max(1, w // 2)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    square = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    pixels = torch.rand((n, 1, h, w), generator=generator) < 0.5
    return {
        "bottom half": (rows >= h // 2).expand(n, c, h, w),
        "50% i.i.d.": pixels.expand(n, c, h, w),
        "centre square": square.expand(n, c, h, w),
    }


@torch.no_grad()
def sample_rows(model: ConvAC, num_columns: int = NUM_COLUMNS, num_rows: int = 6, seed: int = 0) -> list[Row]:
    """Exact samples of ``model``: one row of ``num_columns`` per class for a classifier
    (``sample(n, y=c)``), else ``num_rows`` rows of ``num_columns``."""
    generator = torch.Generator(device=_device(model)).manual_seed(seed)
    if model.num_classes > 1:
        return [Row(f"class {c}", model.sample(num_columns, y=c, generator=generator).cpu())
                for c in range(model.num_classes)]
    return [Row("" if r else "samples", model.sample(num_columns, generator=generator).cpu()) for r in range(num_rows)]


@torch.no_grad()
def inpaint_rows(model: ConvAC, x: Tensor, seed: int = 0) -> list[Row]:
    """``x`` (n, C, H, W) and, for each of :func:`masks`: the masked input, a completion sampled
    from ``P(x_mis | x_obs)`` and the MPE completion (``model.inpaint(x, missing, mode)``)."""
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    device_generator = torch.Generator(device=device).manual_seed(seed)
    x = x.to(device)
    rows = [Row("original", x.cpu())]
    for name, mask in masks(x.cpu(), generator).items():
        mask = mask.to(device)
        rows.append(Row(name, x.cpu(), mask.cpu()))
        for mode, label in (("sample", "  sample"), ("mpe", "  MPE")):
            rows.append(Row(label, model.inpaint(x, mask, mode=mode, generator=device_generator).cpu()))
    return rows


def pick_images(x: Tensor, y: Tensor, n: int = NUM_ORIGINALS) -> Tensor:
    """``n`` images of ``x`` (N, C, H, W) to inpaint: the first of each class (in class order,
    labels ``y`` (N,)), then the next ones in order."""
    first = {}
    for i, label in enumerate(y.tolist()):
        first.setdefault(label, i)
    order = [first[c] for c in sorted(first)]
    chosen = set(order)
    order += [i for i in range(len(x)) if i not in chosen]
    return x[order[:n]]


def _device(model: ConvAC) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------- drawing
def draw(rows: Sequence[Row], title: str, model: ConvAC) -> Image.Image:
    """The mosaic of ``rows`` (every row's images of one shape ``(C, H, W)``) as an RGB image of
    the size given in the module docstring; values scaled by :func:`value_range`."""
    _, h, w = rows[0].images.shape[1:]
    scale = cell_scale(h, w)
    cell_h, cell_w = h * scale, w * scale
    cols = max(len(r.images) for r in rows)
    width = LABEL_WIDTH + cols * (cell_w + GAP) + GAP
    height = TITLE_HEIGHT + len(rows) * (cell_h + GAP) + GAP
    picture = Image.new("RGB", (width, height), BACKGROUND)
    canvas = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    canvas.text((GAP, 3), title, fill=(0, 0, 0), font=font)
    low, high = value_range(model, [r.images for r in rows])
    for i, row in enumerate(rows):
        top = TITLE_HEIGHT + GAP + i * (cell_h + GAP)
        canvas.text((GAP, top + cell_h // 2 - 6), row.label, fill=(0, 0, 0), font=font)
        for j, image in enumerate(to_rgb(row.images, row.missing, low, high)):
            tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
            picture.paste(tile, (LABEL_WIDTH + GAP + j * (cell_w + GAP), top))
    return picture


def value_range(model: ConvAC, images: Sequence[Tensor]) -> tuple[float, float]:
    """The values shown black and white: ``0`` and ``num_values - 1`` for discrete leaves; for
    Gaussian leaves the 1st and 99th percentiles of the (observed) values in ``images``."""
    if model.leaf_spec.is_discrete:
        return 0.0, float(model.leaf_spec.num_values - 1)
    values = torch.cat([x.float().flatten() for x in images])
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return 0.0, 1.0
    low, high = torch.quantile(values[:1_000_000], torch.tensor([0.01, 0.99])).tolist()
    return low, high if high > low else low + 1.0


def to_rgb(x: Tensor, missing: Tensor | None, low: float, high: float) -> np.ndarray:
    """Images ``(n, C, H, W)`` -> ``(n, H, W, 3)`` uint8: ``(x - low) / (high - low)`` clipped to
    [0, 1]; 3 channels as RGB, otherwise the mean of the channels as grey; a pixel with any
    missing (or NaN) channel in :data:`MISSING_COLOR`."""
    x = x.double()
    hidden = torch.isnan(x) if missing is None else missing | torch.isnan(x)
    grey = ((x.nan_to_num(low) - low) / (high - low)).clamp(0, 1)
    rgb = grey if grey.shape[1] == 3 else grey.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    color = torch.tensor(MISSING_COLOR, dtype=rgb.dtype).view(1, 3, 1, 1)
    rgb = torch.where(hidden.any(1, keepdim=True), color, rgb)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------- files
def write_pictures(model: ConvAC, out_dir: str | Path, x: Tensor | None = None, name: str = "the model",
                   seed: int = 0, source: str = "images") -> list[Path]:
    """Write ``samples.png`` and ``inpaint.png`` of ``model`` (an image model) into ``out_dir``;
    the completions are of (the first :data:`NUM_ORIGINALS` of) ``x`` (n, C, H, W), described as
    ``source`` in the title, or of samples of the model when ``x`` is None (said in the title).
    ``name`` is the model's name in the titles. Returns the two paths."""
    check_image_model(model, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        samples = sample_rows(model, seed=seed)
        what = "per class" if model.num_classes > 1 else ""
        paths = [out_dir / "samples.png", out_dir / "inpaint.png"]
        draw(samples, f"samples of {name} {what}".strip(), model).save(paths[0], optimize=True)
        if x is None:
            generator = torch.Generator(device=_device(model)).manual_seed(seed + 1)
            x, source = model.sample(NUM_ORIGINALS, generator=generator).cpu(), "its own samples"
        rows = inpaint_rows(model, x[:NUM_ORIGINALS], seed=seed)
        draw(rows, f"{name} completes {source}: red = missing", model).save(paths[1], optimize=True)
    finally:
        model.train(was_training)
    return paths
