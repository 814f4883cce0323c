"""Representation layer (leaves): ``M`` fully factorized components per patch position.

A leaf *spec* (:class:`Categorical`, :class:`Bernoulli`, :class:`Gaussian`) is a small
description of the family; the model turns it into a *leaf layer* holding the parameters of
every position ``i``, variable ``v`` and component ``d``:

    log P(x_i | d) = sum_v log f_{i,d,v}(x_v)                       (DESIGN section 1, step 2)

Tensors use the position-major layout of the model: ``P`` positions, ``B`` batch, ``V``
variables per patch (``C * p * p``), ``M`` components.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Union

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from convac.errors import InvalidValueError
from convac.fixed import FixedParameters
from convac.validation import check_flag, check_positive_float, check_positive_int


def normalized_cdf(cumulative: torch.Tensor) -> torch.Tensor:
    """Float64 CDF rows from cumulative sums of probabilities (any scale, any float dtype):
    ``cumulative`` (..., K) -> (..., K), each row nondecreasing and ending at exactly 1.

    A cumulative sum in float32 (or a parallel scan on a GPU) may pass its final value before
    the row's end or step down by an ulp; the running maximum and the division by the last
    entry (``a <= b`` implies ``a / b <= 1``) remove both.
    """
    cdf = cumulative.double().cummax(-1).values
    return cdf / cdf[..., -1:]


def cdf_rows(probabilities: torch.Tensor) -> torch.Tensor:
    """The :func:`normalized_cdf` of nonnegative ``probabilities`` (..., K) (any scale): float64
    rows, nondecreasing, each ending at exactly 1. On CPU the float64 cumulative sum is a
    sequential loop, nondecreasing for nonnegative terms (``fl(a + b) >= a`` for ``b >= 0``), so
    the running maximum, which only a parallel scan needs, is skipped there."""
    cumulative = probabilities.double().cumsum(-1)
    if cumulative.device.type != "cpu":
        return normalized_cdf(cumulative)
    return cumulative / cumulative[..., -1:]


def sample_from_cdf(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw from categorical distributions given by their (unnormalized) CDFs: ``cdf`` (..., K)
    -> (...) long.

    ``k = #{j : F(j) <= u}`` with ``F`` = :func:`normalized_cdf` and ``u ~ U[0, 1)`` in float64,
    one per draw: since ``F(K-1) = 1 > u``, ``k <= K - 1``, and ``F(k-1) <= u < F(k)``, so a
    value whose CDF step is empty (probability 0) is never chosen.
    """
    cdf = normalized_cdf(cdf)
    u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device, dtype=torch.float64)
    return (cdf <= u).sum(-1)


# rows of at most this many values are drawn by comparison with the gathered rows, longer ones
# by one binary search over the whole table (see :func:`sample_table_rows`)
GATHER_MAX_VALUES = 64


def sample_table_rows(cdf: torch.Tensor, rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw from the categorical distributions of a table of CDF rows: ``cdf`` (R, K) float64
    rows of :func:`normalized_cdf` (nondecreasing, each ending at exactly 1), ``rows`` (...) long
    indices in ``[0, R)`` -> (...) long values in ``[0, K)``, one draw per entry of ``rows``:
    ``k = #{j : F_r(j) <= u}``, ``u ~ U[0, 1)`` in float64.

    Short rows (``K <= GATHER_MAX_VALUES``) are gathered and searched (a batched ``searchsorted``
    counts ``#{j : F_r(j) <= u}`` in each; measured faster than comparing and summing). Longer rows are
    not gathered (a ``(..., K)`` tensor of 256 values per draw would be large): with the rows laid
    end to end as ``r + F_r`` (nondecreasing overall), one ``searchsorted`` of
    ``t = min(r + u, largest float64 below r + 1)`` counts ``#{j : r + F_r(j) <= t}``; since
    ``r <= t < r + 1 = r + F_r(K - 1)`` the search stays in row ``r`` (resolution about
    ``r * 2^-52``, below ``1e-9`` for a million rows). Either way ``F_r(K - 1) = 1 > u`` gives
    ``k <= K - 1`` and ``F_r(k - 1) <= u < F_r(k)``: a value whose CDF step is empty
    (probability 0) is never drawn.
    """
    num_rows, k = cdf.shape
    u = torch.rand(rows.shape, generator=generator, device=cdf.device, dtype=torch.float64)
    if k <= GATHER_MAX_VALUES:  # one binary search in each gathered row
        gathered = cdf.index_select(0, rows.reshape(-1))
        return torch.searchsorted(gathered, u.reshape(-1, 1), right=True).view(rows.shape)
    offsets = torch.arange(num_rows, device=cdf.device, dtype=torch.float64)
    row = rows.to(torch.float64)
    target = torch.minimum(row + u, torch.nextafter(row + 1, row)).contiguous()
    return torch.searchsorted((cdf + offsets.unsqueeze(1)).reshape(-1), target, right=True) - rows * k


def sample_indices(logits: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """Draw (``mode="sample"``) or take the argmax (``mode="mpe"``) of categorical logits.

    ``logits`` (..., K) unnormalized log-probabilities -> (...) long; sampling inverts the CDF
    of ``softmax(logits)`` (:func:`sample_from_cdf`).
    """
    if mode == "mpe":
        return logits.argmax(-1)
    if mode != "sample":
        raise InvalidValueError(f"mode must be 'sample' or 'mpe', got {mode!r}")
    return sample_from_cdf(torch.softmax(logits.double(), dim=-1).cumsum_(-1), generator)


class _LogSoftmaxRows(torch.autograd.Function):
    """Rows of the categorical log-probability table, ``out[i, b, v] = log softmax(theta, dim=2)
    .view(-1, M)[rows[i, b, v]]``: ``theta`` (Q, V, N, M) logits over ``N`` values (``Q = P``, or 1
    when shared), ``rows`` (P, B, V) long flat row indices -> (P, B, V, M).

    With ``g`` the output gradient and ``G[q, v, m] = sum_{i, b} g[i, b, v, m]`` over the
    positions ``i`` that use parameter block ``q`` (``i = q``, or all when shared):

        dtheta[q, v, n, m] = sum_{rows[i, b, v] = (q, v, n)} g[i, b, v, m] - softmax(theta)[q, v, n, m] G[q, v, m],

    one ``exp`` of the saved log-probabilities scaled in place plus a sparse ``index_add`` of
    ``g``. Autograd's generic path allocates a second table-sized buffer (the zero-filled
    ``index_select`` gradient) and reads it back in ``log_softmax_backward``; for a 28x28
    categorical-256 table (25 MB) that buffer would be the main source of page faults in a
    training step (DESIGN section 6). First-order only.
    """

    @staticmethod
    def forward(ctx, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(theta, dim=2)
        ctx.save_for_backward(log_p, rows)
        return log_p.view(-1, theta.shape[-1]).index_select(0, rows.reshape(-1)).view(*rows.shape, -1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        log_p, rows = ctx.saved_tensors
        block_sums = grad.sum(1)  # (P, V, M)
        if log_p.shape[0] == 1:  # shared parameters: one block for every position
            block_sums = block_sums.sum(0, keepdim=True)
        dtheta = log_p.exp().mul_(block_sums.unsqueeze(2).neg_())
        dtheta.view(-1, log_p.shape[-1]).index_add_(0, rows.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        return dtheta, None


def _observed_values(x: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """The entries of ``x`` where the bool mask ``observed`` (like ``x``) is True; ``x`` itself
    when there is no mask or every entry is observed (no boolean gather)."""
    return x if observed is None or observed.all() else x[observed]


def check_flip_probability(flip: float, num_values: int) -> None:
    """Raise :class:`InvalidValueError` unless data softening's ``flip`` is in ``[0, (K - 1) / K)``
    for ``K = num_values`` (at ``(K - 1) / K`` the evidence says nothing)."""
    bound = (num_values - 1) / num_values
    if not 0.0 <= flip < bound:
        raise InvalidValueError(f"data softening's flip probability must be in [0, {bound:g}) for {num_values} values, "
                                f"got {flip}")


def softened_log_probabilities(log_p: torch.Tensor, flip: float, dim: int = 2) -> torch.Tensor:
    """Data softening (Liu & Van den Broeck, "Tractable Regularization of Probabilistic Circuits",
    NeurIPS 2021): an observed value ``x`` is soft evidence that keeps ``x`` with probability
    ``1 - flip`` (their ``beta``) and moves to each of the other ``K - 1`` values with
    ``flip / (K - 1)``. A categorical leaf ``f`` then gives

        log sum_t T[x, t] f(t) = log( flip / (K - 1) + (1 - flip K / (K - 1)) f(x) ),

    ``log_p`` the log-probabilities over ``K`` values along ``dim`` (any shape) -> the softened
    ones, same shape, in nats. Since the circuit is smooth and decomposable, softening every
    leaf softens every variable of the data independently, which is their softened likelihood.
    ``flip`` in ``[0, (K - 1) / K)`` (:func:`check_flip_probability`)."""
    k = log_p.shape[dim]
    check_flip_probability(flip, k)
    if flip == 0.0:
        return log_p
    floor = torch.full((), math.log(flip / (k - 1)), dtype=log_p.dtype, device=log_p.device)  # log(flip / (K - 1))
    return torch.logaddexp(log_p + math.log1p(-flip * k / (k - 1)), floor)


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Categorical:
    """Categorical leaves over ``{0, ..., num_values - 1}``: ``f(x) = softmax(theta)[x]``."""

    num_values: int

    def __post_init__(self) -> None:
        check_positive_int("Categorical num_values", self.num_values, minimum=2)

    is_discrete = True

    def make_layer(self, num_positions: int, num_vars: int, num_components: int, shared: bool) -> "CategoricalLayer":
        return CategoricalLayer(self.num_values, num_positions, num_vars, num_components, shared, self._name())

    def _name(self) -> str:
        return f"Categorical({self.num_values})"

    def to_dict(self) -> dict:
        return {"name": "categorical", **asdict(self)}


@dataclass(frozen=True)
class Bernoulli(Categorical):
    """Bernoulli leaves over ``{0, 1}`` (a two-valued categorical)."""

    num_values: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.num_values, bool) or self.num_values != 2:
            raise InvalidValueError(f"Bernoulli has exactly 2 values, got num_values={self.num_values!r}")

    def _name(self) -> str:
        return "Bernoulli() (values 0/1)"

    def to_dict(self) -> dict:
        return {"name": "bernoulli"}


@dataclass(frozen=True)
class Gaussian:
    """Diagonal Gaussian leaves: ``f(x) = N(x; mu, sigma^2)``, ``sigma = min_std + softplus(rho)``."""

    min_std: float = 1e-3

    is_discrete = False

    def __post_init__(self) -> None:
        check_positive_float("Gaussian min_std", self.min_std)

    def make_layer(self, num_positions: int, num_vars: int, num_components: int, shared: bool) -> "GaussianLayer":
        return GaussianLayer(num_positions, num_vars, num_components, shared, self.min_std)

    def to_dict(self) -> dict:
        return {"name": "gaussian", **asdict(self)}


LeafSpec = Union[Categorical, Gaussian]
_FAMILIES = {"categorical": Categorical, "bernoulli": Bernoulli, "gaussian": Gaussian}


def make_leaf(leaf: LeafSpec | Mapping | str) -> LeafSpec:
    """A leaf spec from a spec, a name (``"bernoulli"``) or a mapping ``{"name": ..., **kwargs}``."""
    if isinstance(leaf, (Categorical, Gaussian)):
        return leaf
    if isinstance(leaf, str):
        leaf = {"name": leaf}
    if isinstance(leaf, Mapping):
        kwargs = dict(leaf)
        name = str(kwargs.pop("name", "")).lower()
        if name not in _FAMILIES:
            raise InvalidValueError(f"unknown leaf family {name!r}; expected one of {sorted(_FAMILIES)}")
        try:
            return _FAMILIES[name](**kwargs)
        except TypeError as err:
            raise InvalidValueError(f"bad arguments for leaf {name!r}: {kwargs} ({err})") from None
    raise InvalidValueError(f"leaf must be a spec, a name or a mapping, got {type(leaf).__name__}")


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class LeafLayer(FixedParameters, nn.Module):
    """Per-position leaf parameters; shared parameters have a position axis of size 1. In a
    :meth:`~convac.fixed.FixedParameters.fixed_weights` block a family's normalized parameters
    (the categorical log-probability table) are computed once."""

    flip = 0.0  # data softening's flip probability inside a softened() block

    def __init__(self, num_positions: int, num_vars: int, num_components: int, shared: bool):
        super().__init__()
        self.num_positions = check_positive_int("num_positions", num_positions)
        self.num_vars = check_positive_int("num_vars", num_vars)
        self.num_components = check_positive_int("num_components", num_components)
        self.shared = check_flag("shared", shared)

    def check_softening(self, flip: float) -> None:
        """Raise :class:`InvalidValueError` unless the family can be trained on data softened by
        ``flip``: continuous leaves only by 0 (no softening); discrete ones override this."""
        if flip:
            raise InvalidValueError(f"data softening softens discrete values: it needs categorical or Bernoulli leaves, "
                                    f"got {self.family_name}")

    @contextlib.contextmanager
    def softened(self, flip: float):
        """Within the block every observed value is soft evidence (:func:`softened_log_probabilities`;
        training with data softening): the leaves, hence the model's likelihood and its
        gradients (EM's expected counts too), are those of the softened data. ``flip`` 0 leaves
        them exact. Raises :class:`InvalidValueError` where :meth:`check_softening` does."""
        self.check_softening(flip)
        previous, self.flip = self.flip, float(flip)
        try:
            yield self
        finally:
            self.flip = previous

    @property
    def _param_positions(self) -> int:
        return 1 if self.shared else self.num_positions

    def _position_index(self, device: torch.device) -> torch.Tensor:
        """``(P, 1)`` index of each position's parameters (all 0 when shared)."""
        idx = torch.arange(self.num_positions, device=device)
        if self.shared:
            idx = torch.zeros_like(idx)
        return idx.view(-1, 1)

    def forward(self, x: torch.Tensor, missing: torch.Tensor | None, maximized: torch.Tensor | None = None) -> torch.Tensor:
        """``x``, ``missing`` (P, B, V) -> (P, B, M): ``log P(x_i | d)``; missing variables are
        marginalized (they give 0). ``missing`` None: every variable is observed (no mask work).

        ``maximized`` (P, B, V) bool, a subset of ``missing``: these variables are maximized
        instead, ``max_x log f_{i,d,v}(x)`` (the log-probability or -density of the mode), as
        the MPE upward pass needs.

        No value is read back to the host: masks are applied whatever they hold.
        """
        per_var = self.log_prob_per_variable(x, missing)  # (P, B, V, M)
        if missing is not None:
            per_var = per_var.masked_fill(missing.unsqueeze(-1), 0.0)
        if maximized is not None:
            per_var = torch.where(maximized.unsqueeze(-1), self.mode_log_prob_per_variable().unsqueeze(1), per_var)
        return per_var.sum(2) if self.num_vars > 1 else per_var.squeeze(2)

    def entropy(self, present: torch.Tensor | None = None) -> torch.Tensor:
        """(P, M): ``H(x_i | d)`` in nats, the sum over the patch's variables (exact).

        ``present`` (P, V) bool leaves out the variables that only pad a patch (the model's
        inputs never hold them: they are marginalized)."""
        per_variable = self.entropy_per_variable().expand(self.num_positions, -1, -1)  # (P, V, M)
        if present is not None:
            per_variable = per_variable * present.unsqueeze(-1)
        return per_variable.sum(1)


class CategoricalLayer(LeafLayer):
    """Categorical leaves; logits ``theta`` of shape ``(P or 1, V, num_values, M)``."""

    def __init__(self, num_values: int, num_positions: int, num_vars: int, num_components: int, shared: bool, name: str):
        super().__init__(num_positions, num_vars, num_components, shared)
        self.num_values = check_positive_int("num_values", num_values, minimum=2)
        self.family_name = name
        self.logits = nn.Parameter(torch.randn(self._param_positions, num_vars, num_values, num_components))

    def check_softening(self, flip: float) -> None:
        """Raise :class:`InvalidValueError` unless ``flip`` is a flip probability for
        ``num_values`` values (:func:`check_flip_probability`)."""
        check_flip_probability(flip, self.num_values)

    def log_probabilities(self) -> torch.Tensor:
        """(P or 1, V, num_values, M): ``log softmax(theta)`` over the values (once in a
        :meth:`fixed_weights` block)."""
        return self._normalize("log", lambda: F.log_softmax(self.logits, dim=2))

    def check_values(self, x: torch.Tensor, observed: torch.Tensor | None) -> None:
        """Raise a one-line ValueError unless the ``observed`` entries of ``x`` (all when None)
        are integer codes in ``[0, num_values)``."""
        values = _observed_values(x, observed)
        if values.numel() == 0:
            return
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise InvalidValueError(f"{self.family_name} leaves expect integer values, got non-integer floats")
        low, high = (v.item() for v in torch.aminmax(values))
        if low < 0 or high > self.num_values - 1:
            raise InvalidValueError(
                f"{self.family_name} leaves expect values in [0, {self.num_values - 1}], "
                f"got values in [{low:g}, {high:g}]"
            )

    def prepare(self, x: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        """Integer codes for the look-up (missing entries set to 0)."""
        return x.long() if missing is None else x.masked_fill(missing, 0).long()

    def log_prob_per_variable(self, x: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        """``x``, ``missing`` (P, B, V) or None -> (P, B, V, M): ``log f_{i,d,v}(x_v)`` (a missing entry
        reads value 0; :meth:`log_prob` zeroes it).

        A row look-up in the ``(P * V * num_values, M)`` log-probability table at the flat index
        ``(i * V + v) * num_values + x_v`` (:class:`_LogSoftmaxRows`): its backward is a sparse
        ``index_add`` of rows, never a ``(B, M, V, P)`` dense tensor (DESIGN section 6), and it
        is cheaper than indexing the 4-d table with three index tensors. In a
        :meth:`fixed_weights` block the rows are read from the table normalized once
        (:meth:`log_probabilities`); in a :meth:`softened` block from the softened table (whose
        backward is autograd's dense one: data softening is for training tables of a few values).
        """
        v = x.shape[-1]
        var_idx = torch.arange(v, device=x.device).view(1, 1, -1)
        rows = (self._position_index(x.device).unsqueeze(-1) * v + var_idx) * self.num_values + self.prepare(x, missing)
        if self._normalized is None and not self.flip:
            return _LogSoftmaxRows.apply(self.logits, rows)
        table = softened_log_probabilities(self.log_probabilities(), self.flip).view(-1, self.num_components)
        return table.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)

    def entropy_per_variable(self) -> torch.Tensor:
        """(P or 1, V, M): ``-sum_x f(x) log f(x)``."""
        logp = self.log_probabilities()
        return -(logp.exp() * logp).sum(2)

    def mode_log_prob_per_variable(self) -> torch.Tensor:
        """(P or 1, V, M): ``max_x log f(x)``, the log-probability of the mode."""
        return self.log_probabilities().amax(2)

    def sample(self, components: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
        """``components`` (P, n) -> (P, n, V) long values drawn from (or the mode of) ``f_{i,d,v}``.

        Sampling inverts the float64 CDF of every row ``(i, d, v)`` of the table
        (:func:`sample_table_rows`: one ``searchsorted`` for every draw, no
        ``(P, n, V, num_values)`` tensor; every value drawn is in the support).
        """
        if mode not in ("sample", "mpe"):
            raise InvalidValueError(f"mode must be 'sample' or 'mpe', got {mode!r}")
        positions = self._position_index(components.device)
        if mode == "mpe":
            return self.logits.detach().argmax(2).permute(0, 2, 1)[positions, components]  # (P or 1, M, V) look-up
        probabilities = F.softmax(self.logits.detach().double(), dim=2).permute(0, 3, 1, 2)  # (P or 1, M, V, nv)
        cdf = cdf_rows(probabilities)
        rows = torch.arange(cdf[..., 0].numel(), device=cdf.device).view(cdf.shape[:-1])
        return sample_table_rows(cdf.reshape(-1, self.num_values), rows[positions, components], generator)  # (P, n, V)


class GaussianLayer(LeafLayer):
    """Gaussian leaves; means ``mu`` and raw scales ``rho`` of shape ``(P or 1, V, M)``."""

    family_name = "Gaussian()"

    def __init__(self, num_positions: int, num_vars: int, num_components: int, shared: bool, min_std: float):
        super().__init__(num_positions, num_vars, num_components, shared)
        self.min_std = check_positive_float("min_std", min_std)
        self.mean = nn.Parameter(torch.rand(self._param_positions, num_vars, num_components))
        self.raw_std = nn.Parameter(torch.full((self._param_positions, num_vars, num_components), -1.0))

    def std(self) -> torch.Tensor:
        return self.min_std + F.softplus(self.raw_std)

    def check_values(self, x: torch.Tensor, observed: torch.Tensor | None) -> None:
        """Raise a one-line ValueError unless ``x`` is floating point with finite ``observed``
        entries (all when None)."""
        if not x.is_floating_point():
            raise InvalidValueError(f"Gaussian leaves expect a floating point input, got dtype {x.dtype}")
        if not torch.isfinite(_observed_values(x, observed)).all():
            raise InvalidValueError("Gaussian leaves expect finite observed values (NaN marks a missing value; inf is not allowed)")

    def prepare(self, x: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        """Values for the density (missing entries set to 0)."""
        x = x if missing is None else x.masked_fill(missing, 0.0)
        return x.to(self.mean.dtype)

    def log_prob_per_variable(self, x: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        std = self.std()
        z = (self.prepare(x, missing).unsqueeze(-1) - self.mean.unsqueeze(1)) / std.unsqueeze(1)
        return -0.5 * z * z - torch.log(std).unsqueeze(1) - 0.5 * math.log(2 * math.pi)

    def entropy_per_variable(self) -> torch.Tensor:
        """(P or 1, V, M): differential entropy ``0.5 log(2 pi e sigma^2)``."""
        return 0.5 * math.log(2 * math.pi * math.e) + torch.log(self.std())

    def mode_log_prob_per_variable(self) -> torch.Tensor:
        """(P or 1, V, M): ``max_x log f(x) = -log sigma - 0.5 log(2 pi)``, the log-density at the mean."""
        return -torch.log(self.std()) - 0.5 * math.log(2 * math.pi)

    def sample(self, components: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
        """``components`` (P, n) -> (P, n, V) float values."""
        pos = self._position_index(components.device)
        mean = self.mean.permute(0, 2, 1)[pos, components]  # (P, n, V)
        if mode == "mpe":
            return mean
        std = self.std().permute(0, 2, 1)[pos, components]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise
