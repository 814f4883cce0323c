"""Fusion-layer building blocks: the log-space sum (1x1 conv on the simplex) and product pooling.

Activations use a *position-major* layout ``(P, B, K)``: ``P = H * W`` grid positions in
row-major order, batch ``B``, channels ``K``. With it, the per-position sum is one batched
matmul over positions with no copies, and pooling is a reduction over each window axis
(DESIGN section 6).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

Grid = tuple[int, int]


def _mix(linear: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Linear-domain sum: ``(P, B, K_in)`` values, ``(P or 1, K_out, K_in)`` weights -> ``(P, B, K_out)``,
    ``mixed[p, b, j] = sum_a w[p, j, a] linear[p, b, a]``: one batched matmul over positions, or
    one ``(P * B, K_in) @ (K_in, K_out)`` matmul for shared weights."""
    if weights.shape[0] == 1:
        return (linear.reshape(-1, linear.shape[-1]) @ weights[0].t()).view(*linear.shape[:-1], -1)
    return torch.bmm(linear, weights.transpose(1, 2))


def _shifted_mix(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``shift`` (P, B, 1) = max of ``x`` over channels (``±inf``/NaN -> 0), ``linear = exp(x - shift)``
    (P, B, K_in) and ``mixed = w @ linear`` (P, B, K_out), so that ``log(mixed) + shift`` is the sum."""
    shift = torch.nan_to_num_(x.amax(dim=-1, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)
    linear = (x - shift).exp_()
    return shift, linear, _mix(linear, weights)


class _LogEinsumExp(torch.autograd.Function):
    """Autograd for :func:`log_einsum_exp` with ``y = log(mixed) + shift`` (``shift`` is a constant):

        dL/dx[p, b, a] = linear[p, b, a] * sum_j w[p, j, a] r[p, b, j],   r = g / mixed,
        dL/dw[p, j, a] = sum_b r[p, b, j] linear[p, b, a]    (summed over positions when shared),

    two matmuls like the forward. Compared with autograd through ``exp``/``bmm``/``log``/``+``
    it allocates two ``(P, B, K)`` buffers instead of five in the forward pass and two instead
    of three in the backward (DESIGN section 6). First-order only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        shift, linear, mixed = _shifted_mix(x, weights)
        ctx.save_for_backward(linear, weights, mixed)
        return torch.log(mixed).add_(shift)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        linear, weights, mixed = ctx.saved_tensors
        ratio = grad / mixed  # (P, B, K_out)
        grad_x = grad_w = None
        if weights.shape[0] == 1:
            flat_ratio, flat_linear = ratio.reshape(-1, ratio.shape[-1]), linear.view(-1, linear.shape[-1])
            if ctx.needs_input_grad[0]:
                grad_x = (flat_ratio @ weights[0]).view_as(linear).mul_(linear)
            if ctx.needs_input_grad[1]:
                grad_w = (flat_ratio.t() @ flat_linear).unsqueeze(0)
        else:
            if ctx.needs_input_grad[0]:
                grad_x = torch.bmm(ratio, weights).mul_(linear)
            if ctx.needs_input_grad[1]:
                grad_w = torch.bmm(ratio.transpose(1, 2), linear)
        return grad_x, grad_w


def log_einsum_exp(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-space sum node: ``y[p, b, j] = log sum_a w[p, j, a] exp(x[p, b, a])``.

    ``x`` (P, B, K_in) log-values; ``weights`` (P or 1, K_out, K_in) on the simplex (rows sum
    to 1) -> (P, B, K_out). Computed as ``log(exp(x - m) @ w^T) + m`` with ``m`` the max over
    input channels (``-inf`` maxima replaced by 0), so the ``(B, K_out, K_in)`` broadcast tensor
    is never formed (DESIGN section 1, "log-einsum-exp"; the paper's 1x1 conv, eqs. 10 and 20,
    in log-space). With gradients it runs :class:`_LogEinsumExp`; without, fully in place.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad):
        return _LogEinsumExp.apply(x, weights)
    shift, _, mixed = _shifted_mix(x, weights)
    return mixed.log_().add_(shift)


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
