"""scikit-learn's bundled 8x8 digits: 1,797 images, values 0..16, 10 classes (no download)."""
from __future__ import annotations

import torch

from convac.data.base import ConvACDataModule, Split, fill_splits


class DigitsDataModule(ConvACDataModule):
    """8x8 digits as ``(N, 1, 8, 8)`` integers in ``[0, 17)`` with labels ``(N,)`` in ``[0, 10)``.

    The test split is a seeded ``test_fraction`` of all images; ``val_fraction`` of the rest
    is held out for validation.
    """

    name = "digits"

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] | None = None,
        num_values: int | None = 17,
        num_classes: int | None = 10,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(in_shape, num_values, num_classes, **kwargs)
        self.test_fraction = test_fraction

    def load_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits  # scikit-learn is slow to import: only when read

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).long().unsqueeze(1)  # (1797, 1, 8, 8)
        y = torch.from_numpy(bunch.target).long()
        return fill_splits({"train": (x, y)}, self.test_fraction, self.val_fraction, self.seed)
