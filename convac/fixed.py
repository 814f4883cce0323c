"""Normalized parameters computed once while the parameters do not change.

A sum layer's simplex weights (``softmax`` of its logits) and a categorical leaf layer's
log-probability table (``log_softmax`` of its logits) are normalized again at every query. Within a
``fixed_weights()`` block (read-only queries under ``torch.no_grad``, such as the entropy probe,
which asks for each of them several times) a layer normalizes each of them once and hands out the
same tensor on every call.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


class FixedParameters:
    """Mixin of a ``nn.Module`` whose normalized parameters may be kept while they are fixed."""

    _normalized: dict[str, torch.Tensor] | None = None  # {kind: tensor} inside a fixed_weights block

    @contextlib.contextmanager
    def fixed_weights(self):
        """Within the block the parameters do not change: every :meth:`_normalize` of a kind
        computes it once and returns the same tensor on every later call."""
        previous, self._normalized = self._normalized, {}
        try:
            yield self
        finally:
            self._normalized = previous

    def _normalize(self, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, kept under the name ``kind`` for the rest of a :meth:`fixed_weights` block."""
        if self._normalized is None:
            return compute()
        if kind not in self._normalized:
            self._normalized[kind] = compute()
        return self._normalized[kind]
