"""Samples of a fixed random teacher HT ConvAC, whose exact log-likelihood is known."""
from __future__ import annotations

import torch
from torch import Tensor

from convac.data.base import ConvACDataModule, Split
from convac.errors import InvalidValueError
from convac.model import HTConvAC


class SyntheticDataModule(ConvACDataModule):
    """Exact samples of :attr:`teacher`, an ``HTConvAC`` with categorical leaves.

    The teacher's parameters (softmax logits) are drawn i.i.d. ``N(0, sharpness^2)`` from
    ``seed``, so a larger ``sharpness`` gives a lower-entropy teacher. ``num_train``,
    ``num_val`` and ``num_test`` samples ``(N, C, H, W)`` are drawn from it (labels uniform
    over ``num_classes``, each image drawn from the teacher's class-conditional); the
    teacher's own NLL on them (:meth:`teacher_nll`) is the floor a student can reach.
    """

    name = "synthetic"

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (1, 8, 8),
        num_values: int = 4,
        num_classes: int = 1,
        num_components: int = 4,
        channels: int | list[int] = 4,
        sharpness: float = 2.0,
        num_train: int = 2000,
        num_val: int = 500,
        num_test: int = 500,
        **kwargs,
    ) -> None:
        if None in (in_shape, num_values, num_classes):
            raise InvalidValueError("data=synthetic draws samples of a given layout: set data.in_shape, data.num_values "
                             f"and data.num_classes (got {in_shape}, {num_values}, {num_classes})")
        super().__init__(in_shape, num_values, num_classes, **kwargs)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        generator = torch.Generator().manual_seed(self.seed)
        self.teacher = HTConvAC(
            list(self.in_shape),
            {"name": "categorical", "num_values": self.num_values},
            num_components=num_components,
            channels=channels,
            num_classes=self.num_classes,
        )
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.copy_(sharpness * torch.randn(p.shape, generator=generator))
        self.teacher.requires_grad_(False).eval()
        self._samples: dict[str, Split] | None = None

    def load_splits(self) -> dict[str, Split]:
        if self._samples is None:
            generator = torch.Generator().manual_seed(self.seed + 1)
            self._samples = {}
            for split, n in self.sizes.items():
                y = torch.randint(self.num_classes, (n,), generator=generator)
                self._samples[split] = (self.teacher.sample(n, y=y, generator=generator), y)
        return self._samples

    @torch.no_grad()
    def teacher_nll(self, split: str = "test") -> float:
        """Mean ``-log P_teacher(x)`` in nats over the samples of ``split``."""
        x: Tensor = self.load_splits()[split][0]
        return -self.teacher.log_prob(x).mean().item()
