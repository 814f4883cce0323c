"""The ConvAC: leaves, fusion layers (sum + product pooling) and a root, with exact queries.

CP and HT ConvACs are one machine with two pooling schedules (DESIGN section 1):

* CP (paper eq. 10): one fusion layer of ``rank`` channels, pooled over the whole grid,
  ``P(X | y) = sum_z a^y_z prod_i sum_d a^{z,i}_d P(x_i | d)``.
* HT (paper eq. 20): fusion layers with small windows (2 for sequences, 2x2 for images)
  down to a 1x1 grid.

The *structure* is the dimension tree the pooling builds (DESIGN section 7). ``"grid"``: the
patches' own grid. ``"learned"``: every one of ``R`` repetitions lays the patch positions out as
a sequence in an order of its own (:mod:`convac.structure` learns it from data; the ``order``
buffer stores it), pooled 1x2 down to one position; the level grids are then ``(R, W_l)`` and the
root sums over the ``R * K_L`` top channels, so the repetition is a latent of the root.

Levels are ``l = 0..L``: level 0 holds the ``M`` leaf components on grid ``(H_0, W_0)``; level
``l`` holds ``K_l`` product nodes on grid ``(H_l, W_l)``. Public tensors are image-like
``(B, K, H, W)``; internally the position-major ``(P, B, K)`` layout of :mod:`convac.layers`.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from convac.errors import InvalidValueError
from convac.layers import Grid, ProductPool, SumLayer, refresh_exact_positions
from convac.leaves import LeafSpec, cdf_rows, make_leaf, sample_indices, sample_table_rows
from convac.validation import check_flag, check_grid, check_positive_float, check_positive_int, check_positive_ints

STRUCTURES = ("grid", "learned")
#: Discrete leaves of at most this many values are folded into the first sum layer
#: (:attr:`ConvAC.fold_leaf_sums`): below the usual batch sizes, so the value table is cheaper.
FOLD_MAX_VALUES = 32


class Architecture(NamedTuple):
    """What rebuilds a model: a registry builder's ``name`` (``"ht"``, ``"cp"``, ...) and its
    constructor ``kwargs``. :class:`HTConvAC` and :class:`CPConvAC` record theirs as
    ``model.architecture`` (so does :func:`convac.create_model` for any builder), which
    ``save_pretrained`` writes into ``config.json``."""

    name: str
    kwargs: dict[str, Any]


def _arguments(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments, from ``locals()`` taken first thing in its ``__init__``."""
    return {k: v for k, v in frame_locals.items() if k not in ("self", "__class__")}


def marginalize_classes(log_joint: torch.Tensor) -> torch.Tensor:
    """``log P(x, y)`` (B, num_classes) -> ``log P(x) = logsumexp_y log P(x, y)`` (B,); one class
    is read off without a ``logsumexp`` (a step of every training batch of a density model)."""
    return log_joint[:, 0] if log_joint.shape[1] == 1 else torch.logsumexp(log_joint, dim=1)


def _leaf_grid(in_shape: Sequence[int], patch_size: int) -> Grid:
    """``(H_0, W_0) = (ceil(H / p), ceil(W / p))``, the level-0 grid of an input ``(C, H, W)``."""
    _, h, w = check_positive_ints("in_shape", in_shape, length=3)
    p = check_positive_int("patch_size", patch_size)
    return (math.ceil(h / p), math.ceil(w / p))


class ConvAC(nn.Module):
    """A ConvAC with an explicit schedule of pooling windows (use :class:`CPConvAC` / :class:`HTConvAC`).

    Args:
        in_shape: ``(C, H, W)`` of one input (a sequence of ``N`` variables is ``(1, 1, N)``).
        leaf: leaf family, a spec (``Categorical(17)``), a name or a mapping ``{"name": ...}``.
        num_components: ``M``, leaf components per position.
        channels: ``[K_1, ..., K_L]``, one per fusion layer.
        windows: ``[(ph, pw), ...]``, the pooling window of each fusion layer, ending at 1x1.
        patch_size: side ``p`` of the non-overlapping patches of level 0.
        num_classes: number of root weight vectors ``P(X | y)``.
        share_leaves: one set of leaf parameters for every position.
        share_weights: one set of sum weights for every position.
        class_prior: ``"uniform"`` (a fixed buffer) or ``"learned"``.

    The parts, which :mod:`convac.entropy` and :mod:`convac.training.em` read (with the queries
    below and :meth:`parent_positions`); tensors of a level are position-major ``(P_l, B, K_l)``
    with ``P_l = H_l * W_l`` positions in row-major order:

    Attributes:
        leaves: the leaf layer (:mod:`convac.leaves`): ``M`` components at every level-0 position.
        sums: the sum layers of levels ``1..L`` (:class:`convac.layers.SumLayer`; ``sums[l - 1]``
            mixes level ``l - 1`` into the ``K_l`` channels of level ``l``; its ``weights()``
            and ``log_weights()`` are ``(P_{l-1} or 1, K_l, K_{l-1})``).
        pools: the product pooling of levels ``1..L`` (:class:`convac.layers.ProductPool`).
        root: the root sum layer, ``(1, num_classes, R * K_L)`` weights.
        grids: ``[(H_l, W_l)]`` for ``l = 0..L``; channels: ``[M, K_1, ..., K_L]``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        leaf: LeafSpec | Mapping | str,
        num_components: int,
        channels: Sequence[int],
        windows: Sequence[Grid],
        patch_size: int = 1,
        num_classes: int = 1,
        share_leaves: bool = False,
        share_weights: bool = False,
        class_prior: str = "uniform",
        structure: str = "grid",
        num_repetitions: int = 1,
    ):
        super().__init__()
        self.in_shape = tuple(check_positive_ints("in_shape", in_shape, length=3))
        num_components = check_positive_int("num_components", num_components)
        channels = check_positive_ints("channels", channels)
        windows = [check_grid("a pooling window", w) for w in windows]
        if len(channels) != len(windows):
            raise InvalidValueError(f"channels has {len(channels)} entries but there are {len(windows)} fusion layers")
        check_flag("share_leaves", share_leaves)
        check_flag("share_weights", share_weights)
        if class_prior not in ("uniform", "learned"):
            raise InvalidValueError(f"class_prior must be 'uniform' or 'learned', got {class_prior!r}")
        if structure not in STRUCTURES:
            raise InvalidValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if check_positive_int("num_repetitions", num_repetitions) != 1 and structure == "grid":
            raise InvalidValueError(f"num_repetitions must be 1 for structure='grid' (one tree; 'learned' builds R of them), "
                             f"got {num_repetitions!r}")

        self.leaf_spec = make_leaf(leaf)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.structure = structure
        self.num_repetitions = int(num_repetitions)
        c, p = self.in_shape[0], self.patch_size
        self.patch_grid = _leaf_grid(self.in_shape, p)
        num_patches = self.patch_grid[0] * self.patch_grid[1]
        if structure == "learned":
            # (R, P_0): the patch (row-major index) at every position of each repetition's sequence
            self.register_buffer("order", torch.arange(num_patches).repeat(self.num_repetitions, 1))
            grid = (self.num_repetitions, num_patches)
        else:
            grid = self.patch_grid
        self.grids: list[Grid] = [grid]
        self.channels: list[int] = [num_components] + channels

        self.leaves = self.leaf_spec.make_layer(grid[0] * grid[1], c * p * p, num_components, share_leaves)
        # (P_img, V): False for the variables that only pad the last patches of the image
        present = self._to_patches(torch.ones(1, *self.in_shape, dtype=torch.bool), False)[:, 0]
        self.register_buffer("present_patch_variables", present, persistent=False)
        self.sums = nn.ModuleList()
        self.pools = nn.ModuleList()
        for k_in, k_out, window in zip(self.channels[:-1], self.channels[1:], windows):
            self.sums.append(SumLayer(grid, k_in, k_out, share_weights))
            self.pools.append(ProductPool(grid, window))
            grid = self.pools[-1].out_grid
            self.grids.append(grid)
        if grid != (self.num_repetitions, 1):
            raise InvalidValueError(f"the pooling schedule {list(windows)} ends on grid {grid}, not {self.num_repetitions}x1")
        self.root = SumLayer((1, 1), self.num_repetitions * self.channels[-1], self.num_classes, shared=True)
        if class_prior == "learned":
            self.class_logits = nn.Parameter(torch.zeros(self.num_classes))
        else:
            self.register_buffer("class_logits", torch.zeros(self.num_classes))
        self._fold_leaf_sums = self._can_fold_leaf_sums() and self.leaf_spec.num_values <= FOLD_MAX_VALUES

    # ---------------------------------------------------------------- structure
    @property
    def num_levels(self) -> int:
        """``L``, the number of fusion layers."""
        return len(self.sums)

    def parent_positions(self, level: int) -> torch.Tensor:
        """(P_{l-1},) long, for ``1 <= level <= L``: the position on grid ``l`` of the product node
        that the sum node at each position of grid ``l - 1`` (row-major) feeds: its parent in the
        latent tree, whose channel ``Z_{l, parent}`` selects the sum node's weight row."""
        if not 1 <= level <= self.num_levels:
            raise InvalidValueError(f"level must lie in [1, {self.num_levels}], got {level}")
        return self.pools[level - 1].parents

    @property
    def num_variables(self) -> int:
        """``D = C * H * W``."""
        return math.prod(self.in_shape)

    @property
    def present_variables(self) -> torch.Tensor:
        """(P_0, V) bool: False for the variables that only pad the last patches of the image,
        at every level-0 position."""
        return self._tree_positions(self.present_patch_variables)

    @torch.no_grad()
    def reset_logits(self, std: float = 1.0, generator: torch.Generator | None = None) -> None:
        """Draw every logit again from ``N(0, std^2)``: the sum weights (root included) and
        categorical leaves (Gaussian leaves keep their means and scales). A larger ``std`` starts
        from sharper weights, whose components differ from the first step on (EM needs that:
        from near-uniform weights its first M-steps pull the components together)."""
        std = check_positive_float("std", std)
        logits = [layer.logits for layer in [*self.sums, self.root]]
        logits += [self.leaves.logits] if isinstance(getattr(self.leaves, "logits", None), nn.Parameter) else []
        for p in logits:
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).mul_(std))  # drawn on the CPU

    def leaf_entropy(self) -> torch.Tensor:
        """(P_0, M): ``H(x_i | d)``, the exact entropy of every leaf component over the real
        (unpadded) variables of its patch."""
        return self.leaves.entropy(self.present_variables)

    def set_order(self, order: torch.Tensor) -> None:
        """Set the learned structure: ``order`` (R, P_0) long, row ``r`` the patch (row-major index
        of the patch grid) at every position of repetition ``r``'s sequence; each row a permutation.
        See :func:`convac.structure.learn_structure`."""
        if self.structure != "learned":
            raise InvalidValueError(f"set_order needs structure='learned', this model has structure={self.structure!r}")
        order = torch.as_tensor(order, dtype=torch.long, device=self.order.device)
        expected = torch.arange(self.order.shape[1], device=order.device)
        if order.shape != self.order.shape or not torch.equal(order.sort(1).values, expected.expand_as(order)):
            raise InvalidValueError(f"order must hold one permutation of 0..{self.order.shape[1] - 1} per repetition, "
                             f"shape {tuple(self.order.shape)}; got shape {tuple(order.shape)}")
        self.order.copy_(order)

    def log_class_prior(self) -> torch.Tensor:
        """(num_classes,): ``log P(y)``."""
        return F.log_softmax(self.class_logits, dim=0)

    # ---------------------------------------------------------------- input handling
    #: Check the input values on every query (the leaves' range, integer codes, finiteness; each
    #: check reads a result back to the host). Shapes are always checked. Set it on an instance,
    #: or for one block with :meth:`validation`, like ``validate_args`` of ``torch.distributions``.
    validate_args: bool = True

    @contextlib.contextmanager
    def validation(self, enabled: bool):
        """Within the block the value checks of the inputs are on (``True``) or off (``False``):
        off for data whose values were checked once beforehand (a convac datamodule checks every
        split when it is set up), so that a query makes no host synchronization."""
        previous, self.validate_args = self.validate_args, bool(enabled)
        try:
            yield self
        finally:
            self.validate_args = previous

    @contextlib.contextmanager
    def fixed_weights(self):
        """Within the block the parameters do not change (read-only queries under
        ``torch.no_grad``): every sum layer normalizes its weights once, and categorical leaves
        their log-probability table (:class:`convac.fixed.FixedParameters`). The entropy probe
        runs in one."""
        with contextlib.ExitStack() as stack:
            for layer in [self.leaves, *self.sums, self.root]:
                stack.enter_context(layer.fixed_weights())
            yield self

    def _check_input(self, x: torch.Tensor, missing: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate ``x`` (B, C, H, W) and build the missing mask: ``missing`` or'ed with the
        NaN entries of a floating-point ``x``; None when nothing can be missing (an integer ``x``
        without a mask on a grid the patches tile exactly), so that the forward pass does no
        mask work. The values are checked when :attr:`validate_args` is set."""
        if not isinstance(x, torch.Tensor):
            raise InvalidValueError(f"expected a torch.Tensor input, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise InvalidValueError(
                f"expected input of shape (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}"
            )
        if missing is not None:
            if not isinstance(missing, torch.Tensor) or tuple(missing.shape) != tuple(x.shape):
                found = tuple(missing.shape) if isinstance(missing, torch.Tensor) else type(missing).__name__
                raise InvalidValueError(f"missing must be a bool mask of the input's shape {tuple(x.shape)}, got {found}")
            missing = missing.to(device=x.device, dtype=torch.bool)
        if x.is_floating_point():
            missing = torch.isnan(x) if missing is None else missing | torch.isnan(x)
        padded = any(n % self.patch_size for n in self.in_shape[1:])
        if missing is None and padded:  # the padding of the last patches is marked missing
            missing = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        if self.validate_args:
            self.leaves.check_values(x, None if missing is None else ~missing)
        return x, missing

    def _to_patches(self, x: torch.Tensor, fill) -> torch.Tensor:
        """(B, C, H, W) -> (P_0, B, V): the variables of every patch, position-major; the
        padding that completes the last patches holds ``fill``."""
        b, (c, h, w), p = x.shape[0], self.in_shape, self.patch_size
        h0, w0 = self.patch_grid
        x = F.pad(x, (0, w0 * p - w, 0, h0 * p - h), value=fill)
        return x.view(b, c, h0, p, w0, p).permute(2, 4, 0, 1, 3, 5).reshape(h0 * w0, b, c * p * p)

    def _from_patches(self, values: torch.Tensor) -> torch.Tensor:
        """(P_img, n, V) -> (n, C, H, W), the inverse of :meth:`_to_patches` (padding cropped)."""
        n, (c, h, w), p = values.shape[1], self.in_shape, self.patch_size
        h0, w0 = self.patch_grid
        x = values.reshape(h0, w0, n, c, p, p).permute(2, 3, 0, 4, 1, 5).reshape(n, c, h0 * p, w0 * p)
        return x[:, :, :h, :w]

    def _tree_positions(self, patches: torch.Tensor) -> torch.Tensor:
        """(P_img, ...) patches in image order -> (P_0, ...) the level-0 positions of the tree
        (``P_0 = R * P_img`` for a learned structure, each repetition in its own order)."""
        return patches if self.structure == "grid" else patches[self.order.flatten()]

    def _image_patches(self, values: torch.Tensor, repetition: torch.Tensor | None) -> torch.Tensor:
        """(P_0, n, V) values at the tree's level-0 positions -> (P_img, n, V) in image order,
        taken from repetition ``repetition`` (n,) long of each sample (learned structure)."""
        if self.structure == "grid":
            return values
        r, p_img = self.order.shape
        per_repetition = values.view(r, p_img, *values.shape[1:])  # (R, P_img, n, V)
        samples = torch.arange(values.shape[1], device=values.device)
        chosen = per_repetition[repetition, :, samples].transpose(0, 1)  # (P_img, n, V) in tree order
        image = torch.empty_like(chosen)
        image[self.order[repetition].t(), samples] = chosen
        return image

    def _root_input(self, top: torch.Tensor) -> torch.Tensor:
        """(R, B, K_L) top-level values -> (1, B, R * K_L), the root's input channels
        (channel ``r * K_L + k`` is channel ``k`` of repetition ``r``)."""
        return top.transpose(0, 1).reshape(1, top.shape[1], -1)

    # ---------------------------------------------------------------- bottom-up pass
    def _upward(
        self, x: torch.Tensor, missing: torch.Tensor | None, max_product: bool = False, top_only: bool = False
    ) -> list[torch.Tensor]:
        """Log-values of the product nodes of every level, position-major ``(P_l, B, K_l)``,
        for an input and mask (or None) checked by :meth:`_check_input`.

        With ``max_product`` the MPE upward pass instead: missing variables are maximized (the
        leaves give their mode's log-probability) and every sum node is a max node,
        ``max_a(log w[j, a] + h_a)``; the values are ``max`` over the missing variables and the
        latents below each node of ``log P(x_obs, x_mis, z | node)``.

        ``top_only``: only the top level is needed (a likelihood): returns ``[h_L]``, and the
        leaves and first sum layer may be folded into one table look-up (:meth:`_folded_leaf_sums`).
        """
        if not max_product:  # every sum layer's exact positions, with one host read when the weights changed
            refresh_exact_positions([*self.sums, self.root])
        # padded variables are missing, hence marginalized (leaf log-likelihood 0), also in the
        # max-product pass; the leaves ignore the values of missing entries (NaN included)
        patches = self._tree_positions(self._to_patches(x, 0))
        leaf_missing = None if missing is None else self._tree_positions(self._to_patches(missing, True))
        first = 0  # the first fusion layer still to run
        if top_only and not max_product and self.fold_leaf_sums:
            h, first = self.pools[0](self._folded_leaf_sums(patches, leaf_missing)), 1
        elif max_product and missing is not None:
            h = self.leaves(patches, leaf_missing, self._tree_positions(self._to_patches(missing, False)))
        else:
            h = self.leaves(patches, leaf_missing)
        levels = [h]
        for sum_layer, pool in list(zip(self.sums, self.pools))[first:]:  # a ModuleList slice builds a module
            h = pool(sum_layer.max_product(h) if max_product else sum_layer(h))
            levels.append(h)
        return levels[-1:] if top_only else levels

    @property
    def fold_leaf_sums(self) -> bool:
        """Whether likelihood passes fold the leaves into the first sum layer
        (:meth:`_folded_leaf_sums`; the values and gradients are those of the layer-by-layer
        pass). Chosen when the model is built: for discrete leaves of one variable per position
        with at most :data:`FOLD_MAX_VALUES` values, under fusion layers. The table costs
        ``num_values + 1`` rows of sum-layer work whatever the batch, the layer-by-layer pass one
        row per example, so folding pays for batches larger than the table: a few values (binary
        data, the 17 grey levels of the digits) against the batches of training and evaluation.
        Set it to force either pass (True only where folding applies)."""
        return self._fold_leaf_sums

    @fold_leaf_sums.setter
    def fold_leaf_sums(self, fold: bool) -> None:
        if fold and not self._can_fold_leaf_sums():
            raise InvalidValueError("fold_leaf_sums needs discrete leaves of one variable per position under at least one "
                                    f"fusion layer; this model has {self.leaf_spec}, {self.leaves.num_vars} variables per "
                                    f"position and {self.num_levels} fusion layers")
        self._fold_leaf_sums = bool(fold)

    def _can_fold_leaf_sums(self) -> bool:
        return self.num_levels > 0 and self.leaf_spec.is_discrete and self.leaves.num_vars == 1

    def _folded_leaf_sums(self, patches: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
        """``sums[0](leaves(patches, missing))`` by way of the value table: ``patches``,
        ``missing`` (P_0, B, 1) -> (P_0, B, K_1).

        With one variable ``x_i`` per position a sum node over the leaf components is itself a
        categorical distribution, ``log sum_d w[i, j, d] f_{i,d}(x_i) = T[i, x_i, j]``: the table
        ``T`` is the first sum layer applied to the leaf layer's output for every value and, when
        a mask is given, for a missing variable (``(P_0, N + 1, M)``, ``N = num_values``; row
        ``N`` is the leaves with the variable marginalized, ``log sum_d w[i, j, d] = 0``), so every row of the batch
        is a look-up. Costs ``N + 1`` instead of ``B`` rows of sum-layer work. Gradients (and
        EM's flows, read at the leaf layer's output) are those of the layer-by-layer pass,
        summed over the rows with equal values; the missing row carries the flow of the missing
        variables, whose expected counts are ``f * N`` (:mod:`convac.training.em`)."""
        num_positions, num_values = patches.shape[0], self.leaf_spec.num_values
        rows_per_position = num_values + (missing is not None)  # no missing row when nothing can be missing
        rows = torch.arange(rows_per_position, device=patches.device).view(1, -1, 1).expand(num_positions, -1, -1)
        marginalized = None if missing is None else rows == num_values
        table = self.sums[0](self.leaves(rows.clamp_max(num_values - 1), marginalized))  # (P_0, N [+ 1], K_1)
        codes = self.leaves.prepare(patches[..., 0], None if missing is None else missing[..., 0])  # (P_0, B)
        if missing is not None:
            codes = codes.masked_fill(missing[..., 0], num_values)
        offsets = torch.arange(0, num_positions * rows_per_position, rows_per_position, device=patches.device)
        rows = codes + offsets.view(-1, 1)
        return table.reshape(-1, table.shape[-1]).index_select(0, rows.flatten()).view(*rows.shape, -1)

    def _grid_layout(self, level: int, values: torch.Tensor) -> torch.Tensor:
        """(P_l, B, K) -> (B, K, H_l, W_l)."""
        h, w = self.grids[level]
        return values.view(h, w, *values.shape[1:]).permute(2, 3, 0, 1)

    def forward(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes): ``log P(x | y)``, missing variables marginalized."""
        return self.root(self._root_input(self._upward(*self._check_input(x, missing), top_only=True)[-1]))[0]

    def log_joint(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes): ``log P(x, y) = log P(x | y) + log P(y)``."""
        return self(x, missing) + self.log_class_prior()

    def log_prob(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B,): ``log P(x) = logsumexp_y log P(x, y)``."""
        return marginalize_classes(self.log_joint(x, missing))

    def repetition_log_probs(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, R): ``log P(x, r | y)``, the root's sum restricted to
        the top channels of repetition ``r`` (the repetition is the root's latent), so that
        ``logsumexp`` over ``r`` gives :meth:`forward`. The root runs once per repetition, on its
        input with the other repetitions' channels at ``-inf``: EM's flows and the gradients are
        those of this quantity."""
        top = self._upward(*self._check_input(x, missing), top_only=True)[-1]  # (R, B, K_L)
        r, b = top.shape[:2]
        keep = torch.eye(r, dtype=torch.bool, device=top.device).view(r, r, 1, 1)
        copies = top.unsqueeze(0).masked_fill(~keep, float("-inf"))  # (R, R, B, K_L): copy c keeps repetition c
        root_input = copies.transpose(1, 2).reshape(1, r * b, -1)  # rows (copy, example), channels r * K_L + k
        return self.root(root_input)[0].view(r, b, -1).permute(1, 2, 0)

    def log_posterior(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes): ``log P(y | x)`` by Bayes' rule."""
        return F.log_softmax(self.log_joint(x, missing), dim=1)

    def level_log_probs(self, x: torch.Tensor, missing: torch.Tensor | None = None) -> list[torch.Tensor]:
        """List over levels ``0..L`` of ``(B, K_l, H_l, W_l)``: log-values of every product node
        (level 0: the leaf components ``log P(x_i | d)``); each is a normalized distribution
        over its scope."""
        levels = self._upward(*self._check_input(x, missing))
        return [self._grid_layout(level, v) for level, v in enumerate(levels)]

    # ---------------------------------------------------------------- top-down quantities
    def latent_marginals(self) -> list[torch.Tensor]:
        """List over levels ``0..L`` of ``(K_l, H_l, W_l)``: ``P(Z_{l,i} = k)`` under ancestral sampling.

        ``pi_L = sum_y P(y) w_root[y]``; for a child position ``c`` of parent ``i``,
        ``pi_{l-1,c}(a) = sum_j pi_{l,i}(j) w_{l,c}[j, a]`` (DESIGN section 2, "prior flow").
        With ``R`` repetitions the flow of every position of repetition ``r`` sums to
        ``P(r)``, the root's probability of choosing that repetition.
        """
        top = (self.log_class_prior().exp().unsqueeze(1) * self.root.weights()[0]).sum(0)  # (R * K_L,)
        flow = top.view(self.num_repetitions, -1)  # (P_L, K_L) position-major: repetition r is position r
        flows = [flow]
        for level in range(self.num_levels, 0, -1):
            parent = flow.index_select(0, self.parent_positions(level))  # (P, K_l): the flow of every sum node's parent
            layer = self.sums[level - 1]
            flow = torch.bmm(parent.unsqueeze(1), layer.position_weights())[:, 0]  # (P, K_{l-1})
            flows.insert(0, flow)
        return [flow.t().reshape(-1, *grid) for flow, grid in zip(flows, self.grids)]

    def _choose_root(
        self, y: torch.Tensor, evidence: list[torch.Tensor] | None, mode: str, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Root choice for class ``y`` (n,): from ``w_root[y]``, or from the posterior
        ``∝ w_root[y, c] exp(h_L[c](x_obs))`` given ``evidence``. Returns the top latents
        ``Z_L`` (n, R, 1), ``-1`` in the repetitions not chosen, and the repetition (n,)."""
        logits = self.root.log_weights()[0][y]  # (n, R * K_L)
        if evidence is not None:
            logits = logits + self._root_input(evidence[-1])[0]
        channel = sample_indices(logits, mode, generator)  # (n,)
        k_top = self.channels[-1]
        repetition = torch.div(channel, k_top, rounding_mode="floor")
        top = torch.full((len(y), self.num_repetitions, 1), -1, dtype=torch.long, device=logits.device)
        top[torch.arange(len(y), device=logits.device), repetition, 0] = channel % k_top
        return top, repetition

    def _descend(
        self,
        level: int,
        top: torch.Tensor,
        repetition: torch.Tensor,
        evidence: list[torch.Tensor] | None,
        mode: str,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Top-down pass from the channels ``top`` (n, H_l, W_l) of level ``l`` (``-1`` marks
        positions of repetitions that were not chosen): one input channel per sum node below,
        then the leaf values.

        With ``evidence`` (the ``(P_l, n, K_l)`` values of :meth:`_upward`) each choice follows
        the posterior ``P(a | j, x_obs) ∝ w[j, a] exp(h_a(x_obs))`` (``mode="sample"``), or is
        ``argmax_a(log w[j, a] + h_a)`` with the max-product values ``h`` (``mode="mpe"``,
        back-tracking); without evidence, the prior ``w[j, a]``. Leaves give a sample (or their
        mode). Returns values ``(n, C, H, W)``, read from repetition ``repetition`` (n,) of each
        sample, and latents ``[(n, H_m, W_m)]``, ``m = 0..l``, ``-1`` where inactive.
        """
        n = top.shape[0]
        latents = [top]
        for layer, pool in reversed(list(zip(self.sums, self.pools))[:level]):  # a ModuleList slice builds a module
            level -= 1
            parent = pool.expand(latents[0])  # (n, H_{l-1}, W_{l-1})
            h, w = parent.shape[1:]
            rows = layer.weight_rows(parent.reshape(n, h * w), position_dim=1)  # (n, P): each sum node's row of w
            if evidence is None and mode == "sample":  # prior draws: the CDF table of w
                choice = sample_table_rows(cdf_rows(layer.weights()).view(-1, layer.in_channels), rows, generator)
            else:
                logits = layer.log_weights().view(-1, layer.in_channels)[rows]  # (n, P, K_in)
                if evidence is not None:
                    logits = logits + evidence[level].transpose(0, 1)
                choice = sample_indices(logits, mode, generator)
            latents.insert(0, choice.view(n, h, w).masked_fill_(parent < 0, -1))
        values = self.leaves.sample(latents[0].clamp_min(0).reshape(n, -1).t(), mode, generator)  # (P_0, n, V)
        return self._from_patches(self._image_patches(values, repetition)), latents

    @torch.no_grad()
    def sample_below(
        self,
        level: int,
        channels: torch.Tensor,
        generator: torch.Generator | None = None,
        repetition: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """Exact samples of ``X`` given the channels of level ``l``: ``channels`` (n, H_l, W_l)
        long -> (n, C, H, W). The block under position ``i`` follows ``node_{l,i,channels[i]}``;
        with ``R`` repetitions the values are those of repetition ``repetition`` (an int or (n,))."""
        if not 0 <= level <= self.num_levels:
            raise InvalidValueError(f"level must lie in [0, {self.num_levels}], got {level}")
        if tuple(channels.shape[1:]) != self.grids[level]:
            raise InvalidValueError(f"expected channels of shape (n, {', '.join(map(str, self.grids[level]))}) "
                             f"for level {level}, got {tuple(channels.shape)}")
        if channels.min() < 0 or channels.max() >= self.channels[level]:
            raise InvalidValueError(f"channels of level {level} must lie in [0, {self.channels[level] - 1}]")
        repetition = torch.as_tensor(repetition, dtype=torch.long, device=channels.device).expand(len(channels))
        if repetition.min() < 0 or repetition.max() >= self.num_repetitions:
            raise InvalidValueError(f"repetition must lie in [0, {self.num_repetitions - 1}], got {repetition.tolist()}")
        values, _ = self._descend(level, channels.long(), repetition, None, "sample", generator)
        return values

    def _class_labels(self, n: int, y, device: torch.device) -> torch.Tensor:
        if y is None:
            return None
        y = torch.as_tensor(y, device=device, dtype=torch.long).reshape(-1)
        if y.numel() == 1:
            y = y.expand(n)
        if y.shape != (n,) or y.min() < 0 or y.max() >= self.num_classes:
            raise InvalidValueError(f"y must be an int or a ({n},) tensor of labels in [0, {self.num_classes - 1}], got {y.tolist()}")
        return y

    @torch.no_grad()
    def sample(self, n: int, y=None, generator: torch.Generator | None = None, return_latents: bool = False):
        """Exact ancestral samples ``(n, C, H, W)`` (long for discrete leaves, float for Gaussian).

        ``y`` is an int or an ``(n,)`` tensor of classes, drawn from ``P(y)`` when None. With
        ``return_latents`` also the chosen channel of every level, ``[(n, H_l, W_l)]``, ``l = 0..L``
        (``-1`` at the positions of the repetitions the root did not choose).
        """
        device = self.class_logits.device
        labels = self._class_labels(n, y, device)
        if labels is None:
            labels = sample_indices(self.log_class_prior().expand(n, -1), "sample", generator)
        top, repetition = self._choose_root(labels, None, "sample", generator)
        values, latents = self._descend(self.num_levels, top, repetition, None, "sample", generator)
        return (values, latents) if return_latents else values

    @torch.no_grad()
    def inpaint(
        self,
        x: torch.Tensor,
        missing: torch.Tensor | None = None,
        mode: str = "sample",
        y=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Fill the missing variables of ``x`` (B, C, H, W) given the observed ones.

        * ``mode="sample"``: an exact sample of ``P(x_mis | x_obs)`` (of ``P(x_mis | x_obs, y)``
          when ``y`` is given): the top-down pass draws every latent from its posterior given the
          bottom-up evidence.
        * ``mode="mpe"``: the most probable explanation, ``argmax_{x_mis, z} P(x_obs, x_mis, z)``
          jointly over the missing variables and every latent ``z`` (the channel chosen at every
          sum node; the class ``y`` too unless given, else ``P(. | y)``): a max-product upward
          pass (:meth:`_upward`) and arg-max back-tracking down the same top-down pass; exact
          for a ConvAC. Ties go to the lowest index. This is not the most probable completion
          ``argmax_{x_mis} P(x_obs, x_mis)``, which sums over ``z`` (NP-hard in general).
        """
        x, missing = self._check_input(x, missing)
        if missing is None:  # nothing to fill
            missing = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        if mode not in ("sample", "mpe"):
            raise InvalidValueError(f"mode must be 'sample' or 'mpe', got {mode!r}")
        evidence = self._upward(x, missing, max_product=mode == "mpe")
        labels = self._class_labels(x.shape[0], y, x.device)
        if labels is None:
            root_input = self._root_input(evidence[-1])
            top = self.root.max_product(root_input) if mode == "mpe" else self.root(root_input)
            labels = sample_indices(top[0] + self.log_class_prior(), mode, generator)
        top, repetition = self._choose_root(labels, evidence, mode, generator)
        filled, _ = self._descend(self.num_levels, top, repetition, evidence, mode, generator)
        return torch.where(missing, filled.to(x.dtype), x)

    def save_pretrained(self, folder, **options):
        """Write ``folder/model.safetensors``, ``config.json`` and ``README.md`` (the Hugging Face
        Hub's layout) and return ``folder``: :func:`convac.zoo.hub.save_pretrained` (``options``:
        ``card``, ``repo_id``, ``license``), from the arguments recorded in :attr:`architecture`."""
        from convac.zoo.hub import save_pretrained  # convac.zoo imports this module

        return save_pretrained(self, folder, **options)

    def extra_repr(self) -> str:
        structure = f", structure={self.structure}, repetitions={self.num_repetitions}" if self.structure != "grid" else ""
        return f"in_shape={self.in_shape}, leaf={self.leaf_spec}, grids={self.grids}, channels={self.channels}{structure}"


class HTConvAC(ConvAC):
    """Hierarchical Tucker ConvAC (paper eq. 20): product pooling over small windows down to 1x1.

    ``pool`` is an int (that window along every axis longer than 1: 2 means 2x2 for images and
    1x2 for sequences), an ``(ph, pw)`` pair applied the same way, or a list of pairs (one per
    fusion layer). ``channels`` is a list (one per layer) or an int ``K``: layer ``l`` then has
    ``min(round(K * channel_growth^(l - 1)), max_channels)`` channels (every layer ``K`` with the
    defaults), so a region of ``2^l`` variables can be given more states than its halves.

    ``structure="learned"`` builds ``num_repetitions`` balanced binary trees over the patch
    positions instead of the grid (the order of each is set from data by
    :func:`convac.structure.learn_structure`; until then it is the raster order). ``pool=2`` pools
    every level of the tree; ``pool=4`` (8, ...) two (three, ...) levels at once, without the sum
    layers between them: 4-ary products of learned regions, as the 2x2 pooling of the grid.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        leaf: LeafSpec | Mapping | str,
        num_components: int,
        channels: int | Sequence[int],
        pool=2,
        patch_size: int = 1,
        num_classes: int = 1,
        share_leaves: bool = False,
        share_weights: bool = False,
        class_prior: str = "uniform",
        structure: str = "grid",
        num_repetitions: int = 1,
        channel_growth: float = 1.0,
        max_channels: int | None = None,
    ):
        arguments = _arguments(locals())
        grid = _leaf_grid(in_shape, patch_size)
        if structure == "learned":
            if not (isinstance(pool, numbers.Integral) and pool >= 2 and pool & (pool - 1) == 0):
                raise InvalidValueError(f"structure='learned' pools a binary tree's levels 1, 2, 3, ... at a time and needs "
                                 f"pool = 2, 4, 8, ... (an int power of two), got pool={pool!r}")
            grid = (1, grid[0] * grid[1])  # each repetition: a sequence of the patch positions
        windows = self._schedule(grid, pool)
        if check_positive_float("channel_growth", channel_growth) < 1.0:
            raise InvalidValueError(f"channel_growth must be >= 1 (the factor from one layer to the next), got {channel_growth!r}")
        cap = math.inf if max_channels is None else check_positive_int("max_channels", max_channels)
        if isinstance(channels, numbers.Integral):
            first = check_positive_int("channels", channels)
            channels = [int(min(round(first * channel_growth**layer), cap)) for layer in range(len(windows))]
        elif channel_growth != 1.0 or max_channels is not None:
            raise InvalidValueError("channel_growth and max_channels shape an int channels; with a list, give every layer's width")
        super().__init__(in_shape, leaf, num_components, channels, windows, patch_size,
                         num_classes, share_leaves, share_weights, class_prior, structure, num_repetitions)
        self.architecture = Architecture("ht", arguments)

    @staticmethod
    def _schedule(grid: Grid, pool) -> list[Grid]:
        """The windows that take ``grid`` to 1x1."""
        if isinstance(pool, (list, tuple)) and pool and not isinstance(pool[0], numbers.Integral):
            return [check_grid("a pooling window", w) for w in pool]
        window = check_grid("pool", pool)
        windows = []
        h, w = grid
        while (h, w) != (1, 1):
            step = (window[0] if h > 1 else 1, window[1] if w > 1 else 1)
            if step == (1, 1):
                raise InvalidValueError(f"pool={pool!r} cannot reduce grid {(h, w)} to 1x1")
            windows.append(step)
            h, w = math.ceil(h / step[0]), math.ceil(w / step[1])
        return windows


class CPConvAC(ConvAC):
    """CP (shallow) ConvAC (paper eq. 10): one fusion layer of ``rank`` channels with global
    product pooling, ``P(X | y) = sum_z a^y_z prod_i sum_d a^{z,i}_d P(x_i | d)``."""

    def __init__(
        self,
        in_shape: Sequence[int],
        leaf: LeafSpec | Mapping | str,
        num_components: int,
        rank: int,
        patch_size: int = 1,
        num_classes: int = 1,
        share_leaves: bool = False,
        share_weights: bool = False,
        class_prior: str = "uniform",
    ):
        arguments = _arguments(locals())
        global_window = _leaf_grid(in_shape, patch_size)
        super().__init__(in_shape, leaf, num_components, [check_positive_int("rank", rank)], [global_window], patch_size,
                         num_classes, share_leaves, share_weights, class_prior)
        self.architecture = Architecture("cp", arguments)
