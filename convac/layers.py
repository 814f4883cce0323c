"""Fusion-layer building blocks: the log-space sum (1x1 conv on the simplex) and product pooling.

Activations use a *position-major* layout ``(P, B, K)``: ``P = H * W`` grid positions in
row-major order, batch ``B``, channels ``K``. With it, the per-position sum is one batched
matmul over positions with no copies, and pooling is one reduction (DESIGN section 6).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

Grid = tuple[int, int]


def log_einsum_exp(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-space sum node: ``y[p, b, j] = log sum_a w[p, j, a] exp(x[p, b, a])``.

    ``x`` (P, B, K_in) log-values; ``weights`` (P or 1, K_out, K_in) on the simplex (rows sum
    to 1) -> (P, B, K_out). Computed as ``log(exp(x - m) @ w^T) + m`` with ``m`` the detached
    max over input channels (``-inf`` maxima replaced by 0), so the ``(B, K_out, K_in)``
    broadcast tensor is never formed (DESIGN section 1, "log-einsum-exp"; the paper's 1x1
    conv, eqs. 10 and 20, in log-space).
    """
    shift = x.detach().amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    linear = torch.exp(x - shift)
    if weights.shape[0] == 1:  # shared weights: one (P*B, K_in) @ (K_in, K_out) matmul
        mixed = (linear.reshape(-1, linear.shape[-1]) @ weights[0].t()).view(*x.shape[:-1], -1)
    else:
        mixed = torch.bmm(linear, weights.transpose(1, 2))
    return torch.log(mixed) + shift


class SumLayer(nn.Module):
    """Sum nodes on a grid: ``K_in -> K_out`` channels, weights ``softmax(logits)`` over ``K_in``.

    Logits have shape ``(H, W, K_out, K_in)`` per position, or ``(K_out, K_in)`` when shared
    (a true 1x1 convolution).
    """

    def __init__(self, grid: Grid, in_channels: int, out_channels: int, shared: bool):
        super().__init__()
        self.grid = tuple(grid)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.shared = shared
        shape = (out_channels, in_channels) if shared else (*self.grid, out_channels, in_channels)
        self.logits = nn.Parameter(torch.randn(shape))

    @property
    def num_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def log_weights(self) -> torch.Tensor:
        """(P or 1, K_out, K_in): ``log w[p, j, a]``, each row normalized over ``a``."""
        return F.log_softmax(self.logits, dim=-1).reshape(-1, self.out_channels, self.in_channels)

    def weights(self) -> torch.Tensor:
        """(P or 1, K_out, K_in): the simplex weights ``w[p, j, a]``."""
        return F.softmax(self.logits, dim=-1).reshape(-1, self.out_channels, self.in_channels)

    def position_weights(self) -> torch.Tensor:
        """(P, K_out, K_in): the weights of every position (shared weights broadcast)."""
        return self.weights().expand(self.num_positions, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(P, B, K_in) -> (P, B, K_out)."""
        return log_einsum_exp(x, self.weights())

    def extra_repr(self) -> str:
        return f"grid={self.grid}, {self.in_channels} -> {self.out_channels}, shared={self.shared}"


class ProductPool(nn.Module):
    """Product pooling in log-space: the sum of log-values over non-overlapping windows.

    The input grid is padded with log-value 0 up to a multiple of the window, which
    marginalizes the padded positions exactly (an empty scope has probability 1).
    """

    def __init__(self, in_grid: Grid, window: Grid):
        super().__init__()
        self.in_grid = tuple(in_grid)
        self.window = tuple(window)
        self.out_grid = tuple(math.ceil(n / w) for n, w in zip(self.in_grid, self.window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(H * W, B, K) -> (H' * W', B, K), ``H' = ceil(H / ph)``, ``W' = ceil(W / pw)``."""
        (h, w), (ph, pw), (oh, ow) = self.in_grid, self.window, self.out_grid
        grid = x.view(h, w, *x.shape[1:])
        if (oh * ph, ow * pw) != (h, w):
            grid = F.pad(grid, (0, 0, 0, 0, 0, ow * pw - w, 0, oh * ph - h))
        # one reduction per window axis: a joint ``sum(dim=(1, 3))`` over two strided axes
        # takes PyTorch's slow generic reduction path (about 20x slower on CPU)
        windows = grid.view(oh, ph, ow, pw, *x.shape[1:])
        return windows.sum(dim=3).sum(dim=1).view(oh * ow, *x.shape[1:])

    def expand(self, parent: torch.Tensor) -> torch.Tensor:
        """Top-down: copy each parent value to its window. (..., H', W') -> (..., H, W)."""
        (h, w), (ph, pw) = self.in_grid, self.window
        children = parent.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
        return children[..., :h, :w]

    def extra_repr(self) -> str:
        return f"{self.in_grid} -> {self.out_grid}, window={self.window}"
