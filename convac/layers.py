"""Fusion-layer building blocks: the log-space sum (1x1 conv on the simplex) and product pooling.

Activations use a *position-major* layout ``(P, B, K)``: ``P = H * W`` grid positions in
row-major order, batch ``B``, channels ``K``. With it, the per-position sum is one batched
matmul over positions with no copies, and pooling is a reduction over each window axis
(DESIGN section 6).
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from convac import kernels
from convac.fixed import FixedParameters
from convac.validation import Grid, check_flag, check_grid, check_positive_int


LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for a type without autocast, ``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


@contextlib.contextmanager
def _autocast_off(device_type: str) -> Iterator[None]:
    """Within the block autocast is off for ``device_type`` (a no-op where it is not on)."""
    if not _autocast_on(device_type):
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


def float32_under_autocast(sum_node: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Run the log-space sum ``sum_node(x, weights)`` with autocast off and inputs of a lower
    precision cast to float32, when autocast is on for their device (mixed precision:
    ``trainer.precision=bf16-mixed`` or ``16-mixed``); as it is otherwise. Its output is then
    float32, and so are its gradients (the backward passes of the custom functions below run
    with autocast off too, :func:`_backward_without_autocast`).

    Why: autocast would run the sum node's matmul in bfloat16 (8-bit mantissa) or float16, whose
    output no longer matches the float32 ``exp``/``log`` around it, and whose rounding (about
    0.4% or 0.05% per sum) would compound over the levels of the tree; a sum node is two
    elementwise passes around its matmul, so float32 costs it little. Autocast itself keeps
    ``log_softmax`` and ``logsumexp`` in float32 for the same reason. This is what
    ``torch.amp.custom_fwd(cast_inputs=torch.float32)`` does, for every device type.
    """

    @functools.wraps(sum_node)
    def run(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not _autocast_on(device):
            return sum_node(x, weights)
        with torch.autocast(device, enabled=False):
            return sum_node(*(t.float() if t.dtype in LOW_PRECISION else t for t in (x, weights)))

    return run


def _backward_without_autocast(backward):
    """A custom function's ``backward(ctx, grad)`` run with autocast off on the gradient's
    device, as its forward ran (:func:`float32_under_autocast`; ``torch.amp.custom_bwd``):
    a backward pass called inside an autocast block would otherwise run its matmuls in half
    precision."""

    @functools.wraps(backward)
    def run(ctx, grad: torch.Tensor):
        with _autocast_off(grad.device.type):
            return backward(ctx, grad)

    return run


#: Values in the largest tensor of one block of a sum node on the CPU (2^18 float32 values,
#: 1 MiB). The fast path runs its passes (shift, exp, matmul, log) block by block over
#: positions, so that a block's tensors stay in the CPU's caches from one pass to the next
#: instead of going to memory and back four times: at K >= 64 this makes the sum layer 1.1x to
#: 1.3x faster on AVX2 and AVX-512 alike (docs/results/speed.md, "Blocks"). On a GPU the whole
#: tensor is one block: its kernels want all the parallelism there is.
CPU_BLOCK_VALUES = 1 << 18


def _position_blocks(x: torch.Tensor, out_channels: int) -> list[slice]:
    """Slices of the ``P`` positions of ``x`` (P, B, K_in), each of at most
    :data:`CPU_BLOCK_VALUES` values in its input or output (at least one position) on the CPU;
    one slice of all positions on other devices and under ``torch.compile`` (which fuses the
    passes itself)."""
    positions, batch, in_channels = x.shape
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return [slice(0, positions)]
    step = max(1, CPU_BLOCK_VALUES // max(1, batch * max(in_channels, out_channels)))
    return [slice(i, i + step) for i in range(0, positions, step)]


def _mix(linear: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Linear-domain sum into ``out`` (P, B, K_out), contiguous: ``(P, B, K_in)`` values and
    ``(P or 1, K_out, K_in)`` weights, ``mixed[p, b, j] = sum_a w[p, j, a] linear[p, b, a]``: one
    batched matmul over positions, or one ``(P * B, K_in) @ (K_in, K_out)`` matmul for shared
    weights. Returns ``out``."""
    if weights.shape[0] == 1:
        torch.mm(linear.reshape(-1, linear.shape[-1]), weights[0].t(), out=out.view(-1, out.shape[-1]))
        return out
    return torch.bmm(linear, weights.transpose(1, 2), out=out)


def _sum_node_forward(x: torch.Tensor, weights: torch.Tensor, keep: bool):
    """The fast path's forward, block by block over positions (:func:`_position_blocks`):
    ``y = log(mixed) + shift`` (P, B, K_out) with ``shift`` the max of ``x`` over channels
    (``±inf``/NaN -> 0), ``linear = exp(x - shift)`` (P, B, K_in) and ``mixed = w @ linear``
    (P, B, K_out). The maximum, ``exp`` and ``log`` run the kernels measured fastest here
    (:mod:`convac.kernels`). Returns ``(y, linear, mixed)``; ``linear`` and ``mixed`` are whole
    tensors with ``keep`` (the backward pass needs them), else None (a block's are dropped)."""
    positions, batch, in_channels = x.shape
    out_channels = weights.shape[1]
    y = x.new_empty(positions, batch, out_channels)
    linear = x.new_empty(positions, batch, in_channels) if keep else None
    mixed = x.new_empty(positions, batch, out_channels) if keep else None
    for block in _position_blocks(x, out_channels):
        x_block = x[block]
        shift = torch.nan_to_num_(kernels.channel_max(x_block), nan=0.0, posinf=0.0, neginf=0.0)
        shifted = torch.sub(x_block, shift, out=linear[block]) if keep else torch.sub(x_block, shift)
        mixed_block = _mix(kernels.exp_(shifted), weights if weights.shape[0] == 1 else weights[block],
                           mixed[block] if keep else y[block])
        kernels.log_add(mixed_block, shift, y[block])
    return y, linear, mixed


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
        y, linear, mixed = _sum_node_forward(x, weights, keep=True)
        ctx.save_for_backward(linear, weights, mixed)
        return y

    @staticmethod
    @once_differentiable
    @_backward_without_autocast
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


@float32_under_autocast
def log_einsum_exp(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log-space sum node (fast path): ``y[p, b, j] = log sum_a w[p, j, a] exp(x[p, b, a])``.

    ``x`` (P, B, K_in) log-values; ``weights`` (P or 1, K_out, K_in) on the simplex (rows sum
    to 1) -> (P, B, K_out). Computed as ``log(exp(x - m) @ w^T) + m`` with ``m`` the max over
    input channels (``-inf`` maxima replaced by 0), so the ``(B, K_out, K_in)`` broadcast tensor
    is never formed (DESIGN section 1, "log-einsum-exp"; the paper's 1x1 conv, eqs. 10 and 20,
    in log-space), block by block on the CPU (:data:`CPU_BLOCK_VALUES`). With gradients it
    runs :class:`_LogEinsumExp`; without, it keeps no ``(P, B, K)`` tensor but its output.

    Exact to the precision of the dtype, with finite gradients, for any inputs as long as every
    ``log w >= min_log_weight(dtype, K_in)`` (:func:`min_log_weight`); :class:`SumLayer` sends
    rows with smaller weights to :func:`log_sum_exact` instead.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad):
        return _LogEinsumExp.apply(x, weights)
    return _sum_node_forward(x, weights, keep=False)[0]


def min_log_weight(dtype: torch.dtype, in_channels: int) -> float:
    """The smallest log-weight for which :func:`log_einsum_exp` is exact for any inputs:
    ``log(K_in * tiny / eps)`` (about -71 + log K_in in float32, -672 + log K_in in float64).

    Why: with ``a* = argmax_a x_a`` the term ``w[j, a*] exp(x_a* - m) = w[j, a*]`` of the linear
    sum is at least ``K_in * tiny / eps``, while each of the ``K_in`` terms loses at most ``tiny``
    to underflow (also with flush-to-zero), so the sum keeps its relative precision ``eps`` and
    the backward ratio ``g / mixed`` stays finite. Smaller weights paired with the largest input
    would underflow: the sum becomes ``-inf`` or its gradient ``inf``/NaN.
    """
    info = torch.finfo(dtype)
    return math.log(in_channels * info.tiny / info.eps)


# elements of the (P, B, K_out, K_in) broadcast tensor formed at once by the exact paths
BROADCAST_CHUNK = 1 << 22


def _broadcast_chunks(x: torch.Tensor, log_weights: torch.Tensor):
    """Blocks ``(positions, rows, log_w)`` of the broadcast ``log w[p, j, :] + x[p, b, :]``, each
    of at most :data:`BROADCAST_CHUNK` elements (or one position and one batch row): ``positions``
    and ``rows`` slice ``x`` (P, B, K_in); ``log_w`` (p or 1, 1, K_out, K_in) is the matching
    slice of ``log_weights`` (P or 1, K_out, K_in)."""
    p, b, k_in = x.shape
    node = log_weights.shape[1] * k_in  # elements per position and batch row
    pos_step = max(1, min(p, BROADCAST_CHUNK // max(1, node)))
    for i in range(0, p, pos_step):
        positions = slice(i, i + pos_step)
        log_w = (log_weights if log_weights.shape[0] == 1 else log_weights[positions]).unsqueeze(1)
        row_step = max(1, BROADCAST_CHUNK // (min(pos_step, p - i) * node))
        for j in range(0, b, row_step):
            yield positions, slice(j, j + row_step), log_w


def _broadcast_reduce(x: torch.Tensor, log_weights: torch.Tensor, reduce) -> torch.Tensor:
    """``reduce(log w[p, j, :] + x[p, b, :])`` over the input channels: ``x`` (P, B, K_in),
    ``log_weights`` (P or 1, K_out, K_in) -> (P, B, K_out), the broadcast tensor formed in blocks
    (:func:`_broadcast_chunks`)."""
    out = x.new_empty(*x.shape[:2], log_weights.shape[1])
    for positions, rows, log_w in _broadcast_chunks(x, log_weights):
        out[positions, rows] = reduce(log_w + x[positions, rows].unsqueeze(2))
    return out


def _logsumexp_last(t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t, dim=-1)


def _max_last(t: torch.Tensor) -> torch.Tensor:
    return t.amax(dim=-1)


class _LogSumExact(torch.autograd.Function):
    """Autograd for :func:`log_sum_exact`, ``y = logsumexp_a(log w[j, a] + x[a])``, with the
    posterior ``q[p, b, j, a] = exp(log w[p, j, a] + x[p, b, a] - y[p, b, j])`` recomputed in
    blocks (never stored whole):

        dL/dx[p, b, a] = sum_j g[p, b, j] q[p, b, j, a],
        dL/dlog w[p, j, a] = sum_b g[p, b, j] q[p, b, j, a]   (summed over positions when shared).

    Every ``q <= 1``, so both are finite for finite ``g``. First-order only.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        y = _broadcast_reduce(x, log_weights, _logsumexp_last)
        ctx.save_for_backward(x, log_weights, y)
        return y

    @staticmethod
    @once_differentiable
    @_backward_without_autocast
    def backward(ctx, grad: torch.Tensor):
        x, log_weights, y = ctx.saved_tensors
        y = torch.nan_to_num(y, neginf=0.0)  # rows of -inf inputs: every q is exp(-inf) = 0
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(log_weights) if ctx.needs_input_grad[1] else None
        shared = log_weights.shape[0] == 1
        for positions, rows, log_w in _broadcast_chunks(x, log_weights):
            q = (log_w + x[positions, rows].unsqueeze(2) - y[positions, rows].unsqueeze(3)).exp_()
            q.mul_(grad[positions, rows].unsqueeze(3))  # (p, b, K_out, K_in): g_j q_ja
            if grad_x is not None:
                grad_x[positions, rows] = q.sum(2)
            if grad_w is not None:
                grad_w[0 if shared else positions] += q.sum((0, 1)) if shared else q.sum(1)
        return grad_x, grad_w


@float32_under_autocast
def log_sum_exact(x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Log-space sum node in the log domain: ``y[p, b, j] = logsumexp_a(log w[p, j, a] + x[p, b, a])``.

    ``x`` (P, B, K_in), ``log_weights`` (P or 1, K_out, K_in) -> (P, B, K_out). Exact to the
    precision of the dtype, with finite gradients, for any finite weights and inputs (the
    per-output maximum of ``log w + x`` is the shift). Costs ``P * B * K_out * K_in`` memory
    traffic, formed in chunks (:data:`BROADCAST_CHUNK`): :class:`SumLayer` uses it only where
    a weight is below :func:`min_log_weight`.
    """
    if torch.is_grad_enabled() and (x.requires_grad or log_weights.requires_grad):
        return _LogSumExact.apply(x, log_weights)
    return _broadcast_reduce(x, log_weights, _logsumexp_last)


@float32_under_autocast
def log_max_product(x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Max node (the sum node of the max-product semiring, in log space):
    ``y[p, b, j] = max_a(log w[p, j, a] + x[p, b, a])``; ``x`` (P, B, K_in), ``log_weights``
    (P or 1, K_out, K_in) -> (P, B, K_out). Exact for any weights (no linear domain)."""
    return _broadcast_reduce(x, log_weights, _max_last)


@torch.compiler.disable  # reads version counters and the host: outside torch.compile's graphs
def refresh_exact_positions(layers: Iterable["SumLayer"]) -> None:
    """Bring the cached plan of every sum layer in ``layers`` (which of its positions take the
    exact path, :meth:`SumLayer.exact_positions`) up to date, with one host read for all layers
    whose logits changed since their plan was made, and none when none changed.

    A plan depends on the weights alone, so it is remade once per optimizer step; the model calls
    this for all of its sum layers before its upward pass, so that a training step reads one
    small bool vector back from the device instead of one per layer (DESIGN section 6).
    """
    stale = [layer for layer in layers if not layer._plan_is_current()]
    if not stale:
        return
    flags = [layer._small_positions() for layer in stale]
    host = torch.cat(flags).cpu()  # the one host read
    for layer, small, on_host in zip(stale, flags, host.split([len(f) for f in flags])):
        layer._set_plan(small, int((~on_host).sum()))


def _advance_versions_of_fused_updates(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Advance the version counter of every sum layer's logits that a fused optimizer step updated.

    PyTorch's fused optimizers (``fused=True``: Adam, AdamW, SGD, ...) update their parameters in
    place without advancing their version counters, as their other implementations do (torch
    2.13: ``p._version`` stays 0 through ``Adam(fused=True).step()``). A sum layer's exact-position
    plan is keyed by its logits' version counter (:meth:`SumLayer._logits_key`): without this, the
    plan made before the first step would stay in force, and a position whose weights fell below
    :func:`min_log_weight` would keep the fast path. Registered for every optimizer of the process
    when this module is imported (``register_optimizer_step_post_hook``), it touches only sum
    layers' logits (marked ``_plan_keyed`` when their plan is made, :meth:`SumLayer._set_plan`),
    so other parameters keep PyTorch's behaviour; it only increments counters, no kernel runs."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            for parameter in group["params"]:
                if parameter.grad is not None and getattr(parameter, "_plan_keyed", False):
                    torch.autograd.graph.increment_version(parameter)


register_optimizer_step_post_hook(_advance_versions_of_fused_updates)


class SumLayer(FixedParameters, nn.Module):
    """Sum nodes on a grid: ``K_in -> K_out`` channels, weights ``softmax(logits)`` over ``K_in``.

    Logits have shape ``(H, W, K_out, K_in)`` per position, or ``(K_out, K_in)`` when shared
    (a true 1x1 convolution).

    The forward pass is exact to the precision of the dtype, with finite gradients, for any
    finite logits and inputs: positions whose log-weights are certainly all at least
    :func:`min_log_weight` (a bound from the logits, at most ``log K_in`` conservative) take the
    fast shifted matmul (:func:`log_einsum_exp`); the others take :func:`log_sum_exact`. The
    split is cached until the logits change (:meth:`exact_positions`). In a
    :meth:`~convac.fixed.FixedParameters.fixed_weights` block the weights are normalized once.
    """

    def __init__(self, grid: Grid, in_channels: int, out_channels: int, shared: bool):
        super().__init__()
        self.grid = check_grid("grid", grid)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.shared = check_flag("shared", shared)
        shape = (self.out_channels, self.in_channels) if shared else (*self.grid, self.out_channels, self.in_channels)
        self.logits = nn.Parameter(torch.randn(shape))
        self._plan_key: tuple | None = None
        self._plan: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def _over_inputs(self, normalize) -> torch.Tensor:
        """``normalize(logits)`` over the input channels, as (P or 1, K_out, K_in)."""
        return normalize(self.logits, dim=-1).reshape(-1, self.out_channels, self.in_channels)

    def log_weights(self) -> torch.Tensor:
        """(P or 1, K_out, K_in): ``log w[p, j, a]``, each row normalized over ``a`` (once in a
        :meth:`fixed_weights` block)."""
        return self._normalize("log", lambda: self._over_inputs(F.log_softmax))

    def weights(self) -> torch.Tensor:
        """(P or 1, K_out, K_in): the simplex weights ``w[p, j, a]`` (once in a
        :meth:`fixed_weights` block)."""
        return self._normalize("linear", lambda: self._over_inputs(F.softmax))

    def weight_rows(self, parent: torch.Tensor, position_dim: int) -> torch.Tensor:
        """Row indices into the flat ``(P * K_out or K_out, K_in)`` weight table (of
        :meth:`weights`, :meth:`log_weights`, viewed as rows): ``parent`` long holds the output
        channel ``j`` of every sum node, with the ``P`` positions along ``position_dim``; ``-1``
        (no parent on the path) reads channel 0's row. Same shape as ``parent``."""
        rows = parent.clamp_min(0)
        if self.shared:
            return rows
        shape = [1] * rows.dim()
        shape[position_dim] = -1
        offsets = torch.arange(0, self.num_positions * self.out_channels, self.out_channels, device=rows.device)
        return rows + offsets.view(shape)

    def position_weights(self) -> torch.Tensor:
        """(P, K_out, K_in): the weights of every position (shared weights broadcast)."""
        return self.weights().expand(self.num_positions, -1, -1)

    def exact_positions(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(fast, exact)`` long indices into the ``P or 1`` weight positions: the positions whose
        log-weights are certainly all at least :func:`min_log_weight` and the others; None when
        every position is fast (ordinary parameters). See :func:`refresh_exact_positions`."""
        refresh_exact_positions([self])
        return self._plan

    def _logits_key(self) -> tuple:
        """What a plan depends on: the logits' version counter (every in-place update, such as an
        optimizer step, advances it; edits through ``logits.data`` bypass it), storage, dtype and
        device."""
        logits = self.logits
        return logits._version, logits.data_ptr(), logits.dtype, logits.device

    def _plan_is_current(self) -> bool:
        """Whether the cached plan belongs to the logits as they are."""
        return self._plan_key == self._logits_key()

    def _small_positions(self) -> torch.Tensor:
        """(P or 1,) bool on the logits' device: positions with a lower bound on their smallest
        log-weight below :func:`min_log_weight`. ``log w[j, a] = theta[j, a] - logsumexp_a theta[j, a]
        >= min_a theta[j, a] - max_a theta[j, a] - log K_in``: the spread ``max - min`` of each row
        of logits (:data:`convac.kernels.spread`, the kernel measured fastest here), no ``softmax``;
        at most ``log K_in`` nats conservative (such a position takes the exact path, which is
        exact too)."""
        with torch.no_grad():
            widest = kernels.spread(self.logits).reshape(-1, self.out_channels).amax(1)
            return widest > -min_log_weight(self.logits.dtype, self.in_channels) - math.log(self.in_channels)

    def _set_plan(self, small: torch.Tensor, fast_count: int) -> None:
        """Cache the plan from :meth:`_small_positions` ``small`` (P or 1,) and ``fast_count``, its
        number of False flags as read from the host: the index tensors are made on the logits'
        device by a stable sort of the flags (fast positions first, each part in ascending order),
        split at that count, so that nothing more is read back or copied in (on a GPU, ``nonzero``
        and a copy from the host each synchronize). They are normal tensors even when made under
        ``torch.inference_mode`` (the entropy probe), so that a later training step may save them
        for its backward pass."""
        self._plan = None
        if fast_count < len(small):
            with torch.inference_mode(False):
                order = torch.sort(small.to(torch.uint8), stable=True).indices
                self._plan = (order[:fast_count], order[fast_count:])
        self.logits._plan_keyed = True  # a replaced parameter too: fused optimizer steps now advance its counter
        self._plan_key = self._logits_key()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(P, B, K_in) -> (P, B, K_out): ``log sum_a w[p, j, a] exp(x[p, b, a])``."""
        plan = self.exact_positions()
        if plan is None:
            return log_einsum_exp(x, self.weights())
        fast, exact = plan
        if fast.numel() == 0:
            return log_sum_exact(x, self.log_weights())
        # some positions of a per-position layer: each part on its own path, then put back in order
        parts = torch.cat([log_einsum_exp(x[fast], self.weights()[fast]), log_sum_exact(x[exact], self.log_weights()[exact])])
        return parts[torch.argsort(torch.cat([fast, exact]))]

    def max_product(self, x: torch.Tensor) -> torch.Tensor:
        """(P, B, K_in) -> (P, B, K_out): ``max_a(log w[p, j, a] + x[p, b, a])``, the max node of
        the MPE upward pass (:func:`log_max_product`)."""
        return log_max_product(x, self.log_weights())

    def extra_repr(self) -> str:
        return f"grid={self.grid}, {self.in_channels} -> {self.out_channels}, shared={self.shared}"


class ProductPool(nn.Module):
    """Product pooling in log-space: the sum of log-values over non-overlapping windows.

    The input grid is padded with log-value 0 up to a multiple of the window, which
    marginalizes the padded positions exactly (an empty scope has probability 1).
    """

    def __init__(self, in_grid: Grid, window: Grid):
        super().__init__()
        self.in_grid = check_grid("in_grid", in_grid)
        self.window = check_grid("window", window)
        self.out_grid = tuple(math.ceil(n / w) for n, w in zip(self.in_grid, self.window))
        rows = torch.arange(self.in_grid[0]) // self.window[0]
        columns = torch.arange(self.in_grid[1]) // self.window[1]
        # (H * W,) long: the output position (row-major on the output grid) of every input position
        self.register_buffer("parents", (rows.unsqueeze(1) * self.out_grid[1] + columns).flatten(), persistent=False)

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
        """Top-down: copy each parent value to its window. (..., H', W') -> (..., H, W); in the
        position-major layout, ``parent.index_select(0, self.parents)`` (H' * W', ...) -> (H * W, ...)."""
        (h, w), (ph, pw), (oh, ow) = self.in_grid, self.window, self.out_grid
        lead = parent.shape[:-2]
        children = parent[..., :, None, :, None].expand(*lead, oh, ph, ow, pw).reshape(*lead, oh * ph, ow * pw)
        return children[..., :h, :w]

    def extra_repr(self) -> str:
        return f"{self.in_grid} -> {self.out_grid}, window={self.window}"
