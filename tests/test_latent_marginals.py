"""``ConvAC.latent_marginals`` at EVERY level, against exact enumeration of ancestral sampling.

The enumerator below is independent of the model's recursion: it reads the weights straight
from the logits (``softmax``), builds the tree from the level grids and pooling windows itself,
and walks every complete top-down assignment of the latents (class ``y``, the root's channel,
hence the repetition ``r``, then the channel of every active sum node) in probability space.
``P(Z_{l,i} = k)`` is the total probability of the assignments in which node ``(l, i)`` is
active and chose ``k``; positions of the repetitions the root did not choose are inactive.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from convac import Categorical, CPConvAC, HTConvAC


def _softmax_rows(logits: torch.Tensor, out_channels: int, in_channels: int) -> list:
    """(P or 1, K_out, K_in) nested lists of ``softmax(logits)`` over the input channels."""
    return torch.softmax(logits.detach().double(), dim=-1).reshape(-1, out_channels, in_channels).tolist()


def _children(model, level: int, position: int) -> list[int]:
    """The positions (row-major) of level ``level - 1`` pooled into ``position`` of ``level``."""
    h_in, w_in = model.grids[level - 1]
    w_out = model.grids[level][1]
    ph, pw = model.pools[level - 1].window
    row, column = divmod(position, w_out)
    return [i * w_in + j for i in range(row * ph, min((row + 1) * ph, h_in))
            for j in range(column * pw, min((column + 1) * pw, w_in))]


def enumerate_assignments(model):
    """Yield ``(probability, class, repetition, {(level, position): channel})`` for every complete
    top-down assignment of the latents of ``model`` (only the active nodes appear)."""
    top_level, k_top = model.num_levels, model.channels[-1]
    prior = torch.softmax(model.class_logits.detach().double(), 0).tolist()
    root = _softmax_rows(model.root.logits, model.num_classes, model.num_repetitions * k_top)[0]
    weights = [_softmax_rows(s.logits, s.out_channels, s.in_channels) for s in model.sums]

    def descend(pending, probability, chosen):
        """``pending``: sum nodes ``(level, position, parent channel)`` still to choose."""
        if not pending:
            yield probability, chosen
            return
        (level, position, parent), rest = pending[0], pending[1:]
        table = weights[level]
        row = table[0 if len(table) == 1 else position][parent]
        for a, w in enumerate(row):
            below = [(level - 1, c, a) for c in _children(model, level, position)] if level > 0 else []
            yield from descend(below + rest, probability * w, {**chosen, (level, position): a})

    for y, channel in itertools.product(range(model.num_classes), range(model.num_repetitions * k_top)):
        r, k = divmod(channel, k_top)  # root channel r * K_L + k: channel k of repetition r
        start = [(top_level - 1, c, k) for c in _children(model, top_level, r)] if top_level > 0 else []
        for probability, chosen in descend(start, prior[y] * root[y][channel], {(top_level, r): k}):
            yield probability, y, r, chosen


def enumerated_marginals(model):
    """``[(K_l, P_l)]`` marginals, ``P(r)`` per repetition and the total probability, enumerated;
    checks on the way that every active node lies in the chosen repetition's row (learned
    structure) and that every level has an active node."""
    marginals = [torch.zeros(k, h * w, dtype=torch.float64) for k, (h, w) in zip(model.channels, model.grids)]
    p_rep = torch.zeros(model.num_repetitions, dtype=torch.float64)
    total, count = 0.0, 0
    for probability, _, r, chosen in enumerate_assignments(model):
        total, count = total + probability, count + 1
        p_rep[r] += probability
        for (level, position), k in chosen.items():
            if model.structure == "learned":
                assert position // model.grids[level][1] == r, "a node outside the chosen repetition is active"
            marginals[level][k, position] += probability
        assert {level for level, _ in chosen} == set(range(model.num_levels + 1))
    return marginals, p_rep, total, count


def randomized(model, seed, class_logits=None):
    model = model.double()
    model.reset_logits(std=1.5, generator=torch.Generator().manual_seed(seed))
    if class_logits is not None:
        with torch.no_grad():
            model.class_logits.copy_(torch.tensor(class_logits, dtype=torch.float64))
    return model


def learned(in_shape, channels, repetitions, seed, pool=2, num_classes=1, class_logits=None):
    model = randomized(HTConvAC(in_shape, Categorical(3), 2, channels, pool=pool, structure="learned",
                                num_repetitions=repetitions, num_classes=num_classes,
                                class_prior="learned" if class_logits is not None else "uniform"),
                       seed, class_logits)
    num_patches = model.order.shape[1]
    before = [m.clone() for m in model.latent_marginals()]
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.stack([torch.randperm(num_patches, generator=generator) for _ in range(repetitions)])
    order[0] = torch.arange(num_patches).flip(0)  # a non-trivial order in every repetition
    model.set_order(order)
    assert torch.equal(model.order, order)
    # the order only says which patch sits under each leaf: the latents' law does not depend on it
    assert all(torch.equal(a, b) for a, b in zip(before, model.latent_marginals()))
    return model


MODELS = {
    # grid HT: one level, then two levels, then grids the windows do not tile (padded pooling)
    "grid_1x2x2": lambda: randomized(HTConvAC((1, 2, 2), Categorical(3), 3, 2), 0),
    "grid_1x1x4_two_levels": lambda: randomized(HTConvAC((1, 1, 4), Categorical(3), 3, [2, 3]), 1),
    "grid_1x3x3_padded": lambda: randomized(HTConvAC((1, 3, 3), Categorical(2), 2, 2), 2),
    "grid_1x3x2_shared_weights": lambda: randomized(HTConvAC((1, 3, 2), Categorical(2), 2, [3, 2], share_weights=True), 3),
    "grid_patches": lambda: randomized(HTConvAC((1, 3, 8), Categorical(2), 2, [2, 2], patch_size=2), 4),
    # learned structure with R >= 2 repetitions and non-trivial orders
    "learned_R3": lambda: learned((1, 2, 2), [2, 2], 3, 5),
    "learned_R2_three_leaves": lambda: learned((1, 1, 3), [2, 3], 2, 6),
    "learned_R2_pool4": lambda: learned((1, 2, 2), [3], 2, 7, pool=4),
    # mixtures / classifiers with a learned, non-uniform class prior
    "classifier_grid": lambda: randomized(HTConvAC((1, 2, 2), Categorical(3), 2, [2], num_classes=3,
                                                   class_prior="learned"), 8, [1.2, -0.7, 0.3]),
    "classifier_learned_R2": lambda: learned((1, 1, 4), [2, 2], 2, 9, num_classes=2, class_logits=[0.9, -0.4]),
    "classifier_cp": lambda: randomized(CPConvAC((1, 2, 2), Categorical(3), 2, 3, num_classes=2,
                                                 class_prior="learned"), 10, [-1.0, 0.6]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_latent_marginals_equal_enumeration_at_every_level(name):
    model = MODELS[name]()
    marginals, p_rep, total, count = enumerated_marginals(model)
    assert count > 1 and abs(total - 1.0) < 1e-12  # the enumerator covers the whole law
    computed = model.latent_marginals()
    assert len(computed) == model.num_levels + 1
    for level, (pi, expected) in enumerate(zip(computed, marginals)):
        assert pi.dtype == torch.float64
        assert pi.shape == (model.channels[level], *model.grids[level])
        assert torch.allclose(pi.detach().reshape(expected.shape), expected, rtol=1e-12, atol=1e-14), f"level {level}"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_position_of_a_repetition_carries_its_probability(name):
    """Docstring of ``latent_marginals``: the flow of every position of repetition ``r`` sums to
    ``P(r)``, the root's probability of choosing ``r`` (1 for every position of a grid model);
    the mass of the repetitions not chosen is not spread anywhere else."""
    model = MODELS[name]()
    _, p_rep, _, _ = enumerated_marginals(model)
    prior = torch.softmax(model.class_logits.detach().double(), 0)
    root = torch.softmax(model.root.logits.detach().double(), -1)  # (num_classes, R * K_L)
    p_r = (prior @ root).view(model.num_repetitions, -1).sum(1)  # P(r) = sum_y P(y) sum_k w_root[y, r K_L + k]
    assert torch.allclose(p_rep, p_r, rtol=1e-12, atol=1e-14)
    if model.structure == "grid":
        assert torch.allclose(p_r, torch.ones(1, dtype=torch.float64))
    else:  # sharp random root weights: the repetitions are not equally likely
        assert float(p_r.max() - p_r.min()) > 1e-3
    for level, pi in enumerate(model.latent_marginals()):
        h, w = model.grids[level]
        mass = pi.detach().sum(0)  # (H_l, W_l)
        rows = p_r.view(-1, 1).expand(h, w) if model.structure == "learned" else torch.ones(h, w, dtype=torch.float64)
        assert torch.allclose(mass, rows, rtol=1e-12, atol=1e-14), f"level {level}"
        assert abs(float(mass.sum()) - h * w / model.num_repetitions) < 1e-10  # sum over all positions


def test_parent_positions_name_the_product_node_each_sum_node_feeds():
    """``parent_positions(l)``: the sum node at position (r, c) of grid l - 1 feeds the product
    node whose 2x2 window holds it; levels outside 1..L are refused."""
    model = HTConvAC((1, 4, 4), "bernoulli", 2, [3, 3])
    parents = model.parent_positions(1).view(4, 4)
    expected = torch.tensor([[(r // 2) * 2 + c // 2 for c in range(4)] for r in range(4)])
    assert torch.equal(parents, expected)
    assert model.parent_positions(2).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"level must lie in \[1, 2\]"):
        model.parent_positions(0)
