"""The elementwise kernels of a sum node, each chosen by measurement once per process.

A sum node in log space, ``y = log(w @ exp(x - m)) + m`` (:func:`convac.layers.log_einsum_exp`),
spends as much time in three elementwise passes around its matmul as in the matmul itself:

* ``shift``: the maximum ``m`` over the input channels, ``(..., K) -> (..., 1)``;
* ``exp``: ``exp(d)`` of the shifted inputs ``d = x - m <= 0``;
* ``log_add``: ``log(mixed) + m``;

and, once per optimizer step, the bound of a sum layer's exact-position plan
(:meth:`convac.layers.SumLayer._small_positions`):

* ``spread``: ``max - min`` of the logits over their inputs, ``(..., K) -> (...)``.

Each has candidates that compute the same function by different kernels, whose speed depends
on the CPU's vector extensions (AVX2 or AVX-512), the library builds, the device and the dtype:
PyTorch's eager CPU ``amax`` vectorizes a reduction only over multiples of 32 floats, its ``exp``
and ``log`` may not vectorize at all, and NumPy's ``log2`` is several times faster than
``torch.log`` where NumPy dispatches AVX-512 and several times slower where it does not.
No rule about the hardware predicts this, so, as cuDNN's benchmark mode picks a convolution
algorithm, every operation times its candidates on a fixed representative input the first time
it runs on a ``(device type, dtype)``, a size class (:func:`size_class`: per-call costs decide
on small tensors, the loops on large ones) and, for ``shift`` and ``spread``, a channel count; it keeps the
fastest and logs the choice once (logger ``convac.kernels``, INFO). The first candidate is
PyTorch's own operation; another replaces it only when measured at least :data:`MARGIN` times
faster, so that candidates of equal speed do not flip between runs. The choice does not depend on the thread
count set later. ``shift`` and ``spread`` candidates agree bit for bit; ``exp`` and ``log_add`` candidates
agree to about one float32 ulp. Under ``torch.compile`` the PyTorch operation is always used.

:func:`pin` fixes a choice (reproducibility to the last bit across machines, tests); :func:`chosen`
lists the choices made so far.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy
import torch

from convac.errors import InvalidValueError

logger = logging.getLogger(__name__)

LOG2_E = 1.0 / math.log(2.0)
LN_2 = math.log(2.0)
#: How much faster than PyTorch's own operation a candidate must be measured to replace it.
MARGIN = 1.2
#: Size classes: a tensor of ``n`` elements is in class ``floor(log4 n)``, clamped to this range
#: (:func:`size_class`); each class has its own choice, timed on a representative input of
#: ``4^class`` elements (4,096 to 4,194,304: a deep level's activations at a small batch to a
#: batch of 256 on a 64x64 grid with 4 channels). On small tensors the per-call costs decide
#: (``halving`` launches ``log2 K`` operations), on large ones the loops and the caches.
SIZE_CLASSES = range(6, 12)
TIMING_ROUNDS = 20


# ------------------------------------------------------------------------------- candidates
def max_reduce(x: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., 1)``: ``amax`` over the last axis."""
    return x.amax(dim=-1, keepdim=True)


def max_halving(x: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (..., 1)``: the maximum by halving, the elementwise maximum of the two halves
    (overlapping by one channel when ``K`` is odd), repeated: ``log2 K`` vectorized passes over
    shrinking tensors instead of one reduction along a short innermost axis."""
    k = x.shape[-1]
    if k == 1:
        return x.clone()
    while k > 1:
        half = (k + 1) // 2
        x = torch.maximum(x[..., :half], x[..., k - half:])
        k = half
    return x


def spread_aminmax(t: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (...)``: ``max - min`` over the last axis from one ``aminmax``."""
    low, high = torch.aminmax(t, dim=-1)
    return high - low


def spread_amax_amin(t: torch.Tensor) -> torch.Tensor:
    """``(..., K) -> (...)``: ``max - min`` over the last axis from an ``amax`` and an ``amin``: two
    reductions that eager PyTorch vectorizes over multiples of 32 floats, where its ``aminmax``
    does not (10x faster at K = 64 on AVX2 and AVX-512 alike, 2x slower at K = 16)."""
    return t.amax(-1) - t.amin(-1)


def exp_direct(d: torch.Tensor) -> torch.Tensor:
    """``exp(d)``, in place."""
    return d.exp_()


def exp_by_exp2(d: torch.Tensor) -> torch.Tensor:
    """``exp(d) = 2^(d log2 e)``, in place: the roundings of ``log2 e`` and of the product add a
    relative error of about ``|d| eps`` to a term of size ``e^d``, at most ``eps / e`` of the
    largest term of a shifted sum (``d <= 0``)."""
    return d.mul_(LOG2_E).exp2_()


def log_add_torch(mixed: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = log(mixed) + shift`` (``out`` may be ``mixed`` itself); returns ``out``."""
    return torch.log(mixed, out=out).add_(shift)


def log_add_numpy(mixed: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = shift + ln 2 * log2(mixed)`` with NumPy's ``log2`` (one thread) on CPU tensors'
    memory, the scaling folded into the addition (``out`` may be ``mixed`` itself); returns ``out``."""
    with numpy.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf and NaN stay as they are
        numpy.log2(mixed.detach().numpy(), out=out.detach().numpy())
    return torch.add(shift, out, alpha=LN_2, out=out)


def _numpy_applies(mixed: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> bool:
    return (mixed.device.type == "cpu" and mixed.dtype in (torch.float32, torch.float64) and mixed.is_contiguous()
            and out.is_contiguous() and out.shape == mixed.shape and out.dtype == mixed.dtype)


def _always(*_) -> bool:
    return True


@dataclass(frozen=True)
class Candidate:
    """One kernel of an operation: its name (as :func:`pin` takes it), the function, and whether
    it can run on given arguments (else the operation's first candidate runs)."""

    name: str
    run: Callable
    applies: Callable[..., bool] = _always


# ------------------------------------------------------------------------------- choosing
# Representative inputs (seeded; the values of a sum node's pass), on the CPU in float32: the
# arguments an operation's candidates are timed on, given the channel count for ``shift`` and ``spread``.
def _rows_input(g: torch.Generator, channels: int | None, elements: int) -> tuple:
    return (torch.randn(max(1, elements // channels), channels, generator=g).mul_(3),)


def _exp_input(g: torch.Generator, channels: int | None, elements: int) -> tuple:
    return (torch.randn(elements, generator=g).abs_().mul_(-3),)


def _log_add_input(g: torch.Generator, channels: int | None, elements: int) -> tuple:
    rows = elements // 16
    mixed = torch.rand(rows, 16, generator=g).add_(0.1)
    return mixed, torch.randn(rows, 1, generator=g), mixed


def size_class(tensor: torch.Tensor) -> int:
    """``floor(log4 numel)`` clamped to :data:`SIZE_CLASSES`: the class whose choice runs on ``tensor``."""
    return min(max((tensor.numel().bit_length() - 1) // 2, SIZE_CLASSES[0]), SIZE_CLASSES[-1])


def describe(key: tuple) -> str:
    """A key of :func:`chosen` as text: ``"cpu float32 K=16 4^9"`` (device type, dtype, channels
    where the choice depends on them, size class as ``4^class`` values), or ``"pinned"``."""
    if key == ("pinned",):
        return "pinned"
    device, dtype, channels, size = key
    parts = [device, str(dtype).removeprefix("torch."), *([] if channels is None else [f"K={channels}"]), f"4^{size}"]
    return " ".join(parts)


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], arguments: tuple) -> tuple:
    """``arguments`` with ``fn`` applied to each tensor once: a tensor passed twice (``log_add``'s
    ``mixed`` as its own ``out``) stays one tensor, so the kernels are timed as they run."""
    done: dict[int, torch.Tensor] = {}
    for a in arguments:
        if isinstance(a, torch.Tensor) and id(a) not in done:
            done[id(a)] = fn(a)
    return tuple(done.get(id(a), a) for a in arguments)


def _seconds(candidate: Candidate, arguments: tuple, device: torch.device) -> float:
    """The fastest of :data:`TIMING_ROUNDS` runs (after one untimed run) of ``candidate`` on fresh
    copies of ``arguments`` (the kernels work in place; an argument passed twice stays one tensor)."""
    best = math.inf
    for round_ in range(TIMING_ROUNDS + 1):
        copies = _map_tensors(torch.Tensor.clone, arguments)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        candidate.run(*copies)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if round_:
            best = min(best, time.perf_counter() - start)
    return best


class Operation:
    """An operation with candidate kernels; calling it runs the kernel chosen for the arguments'
    ``(device type, dtype, channels or None, size class)`` (:func:`size_class` of the first
    argument), timing the candidates the first time (module docstring)."""

    def __init__(self, name: str, candidates: list[Candidate], timing_input: Callable[..., tuple],
                 by_channels: bool = False):
        self.name = name
        self.timing_input = timing_input
        self.candidates = {c.name: c for c in candidates}
        self.reference = candidates[0]
        self.by_channels = by_channels
        self.choices: dict[tuple, Candidate] = {}
        self.timings: dict[tuple, dict[str, float]] = {}  # seconds of each candidate, per key
        self.pinned: Candidate | None = None

    def __call__(self, tensor: torch.Tensor, *rest):
        if torch.compiler.is_compiling():
            return self.reference.run(tensor, *rest)
        key = (tensor.device.type, tensor.dtype, tensor.shape[-1] if self.by_channels else None, size_class(tensor))
        kernel = self.pinned or self.choices.get(key) or self._choose(key, tensor.device)
        if not kernel.applies(tensor, *rest):
            kernel = self.reference
        return kernel.run(tensor, *rest)

    @torch.no_grad()
    def _choose(self, key: tuple, device: torch.device) -> Candidate:
        _, dtype, channels, size = key
        arguments = _map_tensors(lambda a: a.to(device, dtype),
                                 self.timing_input(torch.Generator().manual_seed(0), channels, 4 ** size))
        usable = [c for c in self.candidates.values() if c.applies(*arguments)]
        seconds = {c.name: _seconds(c, arguments, device) for c in usable}
        fastest = min(usable, key=lambda c: seconds[c.name])
        chosen = fastest if seconds[fastest.name] * MARGIN <= seconds[self.reference.name] else self.reference
        self.choices[key] = chosen
        self.timings[key] = seconds
        times = ", ".join(f"{name} {1e3 * s:.3f} ms" for name, s in seconds.items())
        logger.info("sum-node kernel %s on %s: %s (%s, per %d values)", self.name, describe(key), chosen.name, times,
                    arguments[0].numel())
        return chosen


OPERATIONS = {
    "shift": Operation("shift", [Candidate("amax", max_reduce), Candidate("halving", max_halving)], _rows_input,
                       by_channels=True),
    "exp": Operation("exp", [Candidate("exp", exp_direct), Candidate("exp2", exp_by_exp2)], _exp_input),
    "log_add": Operation("log_add", [Candidate("torch", log_add_torch), Candidate("numpy", log_add_numpy, _numpy_applies)],
                         _log_add_input),
    "spread": Operation("spread", [Candidate("aminmax", spread_aminmax), Candidate("amax_amin", spread_amax_amin)],
                        _rows_input, by_channels=True),
}
channel_max = OPERATIONS["shift"]
exp_ = OPERATIONS["exp"]
log_add = OPERATIONS["log_add"]
spread = OPERATIONS["spread"]


def pin(**kernels: str | None) -> None:
    """Fix the kernel of operations by name, e.g. ``pin(log_add="torch", exp="exp")`` (results
    then agree to the last bit on every machine); ``None`` goes back to measuring. Raises an
    :class:`InvalidValueError` for an unknown operation or kernel."""
    for operation, name in kernels.items():
        if operation not in OPERATIONS:
            raise InvalidValueError(f"unknown sum-node operation {operation!r}; expected one of {sorted(OPERATIONS)}")
        op = OPERATIONS[operation]
        if name is not None and name not in op.candidates:
            raise InvalidValueError(f"unknown kernel {name!r} for {operation}; expected one of {sorted(op.candidates)}")
        op.pinned = None if name is None else op.candidates[name]


def chosen() -> dict[str, dict[tuple, str]]:
    """The kernels chosen so far: ``{operation: {(device type, dtype, channels or None, size class): name}}``
    (:func:`size_class`; a pinned operation lists ``{("pinned",): name}``)."""
    return {name: ({("pinned",): op.pinned.name} if op.pinned else {k: c.name for k, c in op.choices.items()})
            for name, op in OPERATIONS.items()}


def measured() -> dict[str, dict[tuple, dict[str, float]]]:
    """The timings behind :func:`chosen`: ``{operation: {key: {candidate: seconds}}}``, each the
    fastest of :data:`TIMING_ROUNDS` runs on the representative input of the key's size class."""
    return {name: {key: dict(seconds) for key, seconds in op.timings.items()} for name, op in OPERATIONS.items()}


def forget() -> None:
    """Forget every measured choice (the next call measures again); pins stay."""
    for op in OPERATIONS.values():
        op.choices.clear()
        op.timings.clear()
