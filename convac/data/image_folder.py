"""Your own images: a folder with one subfolder per class (torchvision's ``ImageFolder`` layout).

``root/CLASS/*.png`` (any format Pillow reads: png, jpg, bmp, gif, tif, webp, ppm/pgm); the
classes are the subfolder names in sorted order, labels ``0 .. K-1``. A folder of images
with no subfolders is an unlabelled set. Images are read with Pillow as 8-bit grayscale
(``mode=L``, one channel) or RGB (``mode=RGB``, three channels; by default RGB when any
image has colour), resized to ``size`` and quantized to ``num_values`` levels
(``floor(v * num_values / 256)``); with ``data.continuous=true`` they are served in
``[0, 1]`` for Gaussian leaves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convac.data.base import ConvACDataModule, Split, fill_splits
from convac.errors import InvalidValueError, MissingFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MODES = ("L", "RGB")
_GRAY_BANDS = {("1",), ("L",), ("L", "A")}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_images(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root``, their labels and the class names: one class per
    subfolder (sorted by name), or no classes (labels 0) when ``root`` holds the images."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"data.root={root.resolve()}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(root)
    if classes and loose:
        raise InvalidValueError(f"data.root={root} holds both class subfolders ({', '.join(classes[:5])}) and images "
                         f"({loose[0].name}); expected one subfolder per class, or images only")
    if not classes:
        if not loose:
            raise InvalidValueError(f"data.root={root} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no class subfolders")
        return loose, [0] * len(loose), []
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _images_in(root / name)
        if not found:
            raise InvalidValueError(f"data.root={root}: the class folder {name}/ holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _open(path: Path) -> Image.Image:
    """The decoded image at ``path``; a ValueError names the file if Pillow cannot read it or
    it is not an 8-bit image (16-bit and float images would be clipped)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidValueError(f"{path}: cannot read the image ({e})") from e
    if image.mode.startswith(("I", "F")):
        raise InvalidValueError(f"{path} is a {image.mode} image (16-bit, 32-bit or float); data=image_folder reads 8-bit "
                         f"images: convert it to 8-bit grayscale or RGB")
    return image


def read_images(files: list[Path], size: tuple[int, int] | None, mode: str | None) -> np.ndarray:
    """``(N, C, H, W)`` uint8 pixels of ``files`` in ``mode`` (``L`` or ``RGB``; None: RGB if
    any image has colour), resized to ``size = (H, W)`` (None: the images' common size; a
    ValueError names two files of different sizes)."""
    images = [_open(path) for path in files]
    if mode is None:
        mode = "L" if all(image.getbands() in _GRAY_BANDS for image in images) else "RGB"
    if size is None:
        sizes = [image.size for image in images]
        other = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
        if other is not None:
            (w0, h0), (w1, h1) = sizes[0], sizes[other]
            raise InvalidValueError(f"images of mixed sizes: {files[0]} is {h0}x{w0} (HxW) but {files[other]} is {h1}x{w1}; "
                             f"set data.size=[H, W] to resize them all")
        size = sizes[0][::-1]
    h, w = size
    pixels = []
    for image in images:
        image = image.convert(mode)
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)  # antialiased when shrinking
        pixels.append(np.asarray(image, dtype=np.uint8).reshape(h, w, -1).transpose(2, 0, 1))
    return np.stack(pixels)


class ImageFolderDataModule(ConvACDataModule):
    """The images under ``root`` (see the module docstring) as ``(N, C, H, W)`` codes in
    ``[0, num_values)``.

    Args:
        root: the folder: one subfolder of images per class, or images only (unlabelled).
        size: ``[H, W]`` to resize every image to; None keeps their size (which must then be
            common to all).
        mode: ``"L"`` (grayscale, ``C = 1``) or ``"RGB"`` (``C = 3``); None: RGB if any image
            has colour, else L.
        num_values: quantization levels of the 8-bit pixels, 2 to 256.
        test_fraction: share of the images held out for testing (then ``val_fraction`` of the
            rest for validation), seeded by ``seed``.

    ``in_shape`` is read from the images (``[C, H, W]``), ``num_classes`` from the subfolders;
    :attr:`classes` names them.
    """

    name = "image_folder"

    def __init__(
        self,
        root: str,
        size: list[int] | tuple[int, int] | None = None,
        mode: str | None = None,
        num_values: int | None = 256,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        num_values = 256 if num_values is None else int(num_values)
        if not 2 <= num_values <= 256:
            raise InvalidValueError(f"data.num_values must be in [2, 256] (levels of 8-bit pixels), got {num_values}")
        if mode not in (None, *MODES):
            raise InvalidValueError(f"data.mode must be one of {list(MODES)} or null, got {mode!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise InvalidValueError(f"data.size must be [H, W] with positive sizes, got {list(size)}")
        super().__init__(num_values=num_values, **kwargs)
        self.root = Path(root)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mode = mode
        self.test_fraction = test_fraction
        self.classes: list[str] = []

    def load_splits(self) -> dict[str, Split]:
        files, labels, self.classes = list_images(self.root)
        pixels = torch.from_numpy(read_images(files, self.size, self.mode).astype(np.int64))
        x = pixels * self.num_values // 256  # the level of each 8-bit value
        return fill_splits({"train": (x, torch.tensor(labels))}, self.test_fraction, self.val_fraction, self.seed)
