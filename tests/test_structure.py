"""Structure learning (convac.structure) and learned-structure models: the tree, its determinism,
and its storage with the model (the exact queries of such models are in test_model / test_entropy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convac import Bernoulli, Categorical, Gaussian, HTConvAC, create_model
from convac.structure import balanced_tree_order, chow_liu_matching_order, chow_liu_order, learn_structure, pairwise_mutual_information, quantize
from convac.zoo.pretrained import load_into, read_weights, save_weights


def copies_data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary data (n, 1, 1, d) in which variable ``i`` is a noisy copy of variable ``partner[i]``
    and the pairs are independent of each other: the tree must pair every variable with its copy."""
    g = torch.Generator().manual_seed(seed)
    partner = torch.randperm(d, generator=g)
    pairs = partner.view(-1, 2)
    x = torch.zeros(n, d, dtype=torch.long)
    source = torch.randint(0, 2, (n, d // 2), generator=g)
    flip = (torch.rand(n, d // 2, generator=g) < 0.05).long()
    x[:, pairs[:, 0]] = source
    x[:, pairs[:, 1]] = source ^ flip
    return x.view(n, 1, 1, d), pairs


def test_mutual_information_matches_its_definition():
    x, pairs = copies_data(4000, 6)
    codes, levels = quantize(x.view(4000, 6).double(), discrete=True, bins=8)
    mi, _ = pairwise_mutual_information(codes, levels, pseudocount=0.0)
    # a binary symmetric channel with flip rate 0.05 on a fair bit: I = log 2 - H(0.05)
    h = -(0.05 * torch.log(torch.tensor(0.05)) + 0.95 * torch.log(torch.tensor(0.95)))
    a, b = pairs[0].tolist()
    assert mi[a, b].item() == pytest.approx(torch.log(torch.tensor(2.0)).item() - h.item(), abs=0.02)
    assert mi[pairs[0, 0], pairs[1, 0]].item() < 0.01 and torch.equal(mi, mi.t()) and (mi.diagonal() == 0).all()


@pytest.mark.parametrize("d", [8, 9, 12])
def test_learned_tree_pairs_dependent_variables_first(d):
    x, pairs = copies_data(3000, d - d % 2)
    if d % 2:  # one extra independent variable
        x = torch.cat([x, torch.randint(0, 2, (3000, 1, 1, 1))], dim=-1)
    model = HTConvAC((1, 1, d), Bernoulli(), 2, 2, structure="learned")
    order = learn_structure(model, x)[0]
    assert sorted(order.tolist()) == list(range(d))  # every variable exactly once
    level_one = {frozenset(order[i:i + 2].tolist()) for i in range(0, d - 1, 2)}
    assert {frozenset(p.tolist()) for p in pairs} <= level_one
    if d % 2:
        assert order[-1].item() == d - 1  # the unpaired variable waits at the end of the sequence


def test_a_learned_tree_can_be_pooled_two_levels_at_a_time():
    """pool=4 multiplies the level-2 regions of the tree (blocks of 4 in its order) at once."""
    x, pairs = copies_data(2000, 12)
    model = HTConvAC((1, 1, 12), Bernoulli(), 2, 2, structure="learned", pool=4)
    assert model.grids == [(1, 12), (1, 3), (1, 1)]
    order = learn_structure(model, x)[0]
    level_one = {frozenset(order[i:i + 2].tolist()) for i in range(0, 12, 2)}
    assert {frozenset(p.tolist()) for p in pairs} <= level_one
    assert torch.logsumexp(model.log_prob(torch.cartesian_prod(*[torch.arange(2)] * 12).view(-1, 1, 1, 12)), 0).abs() < 1e-4


def test_balanced_tree_keeps_blocks_aligned_with_the_pooling():
    """Every level-l block of the order is one region of the tree: a planted hierarchy of
    similarities (pairs, then pairs of pairs) comes out block by block, for any size."""
    for d in (5, 7, 16, 21):
        g = torch.Generator().manual_seed(d)
        hidden = torch.randperm(d, generator=g)  # position of variable i in the planted order
        distance = (hidden.view(-1, 1) ^ hidden.view(1, -1)).double()  # xor distance: a binary tree
        similarity = 1.0 / (1.0 + distance)
        order = balanced_tree_order(similarity.fill_diagonal_(0.0))
        planted = hidden[order]  # the planted positions, in the learned order
        for size in (2, 4, 8):
            for start in range(0, d - size + 1, size):
                block = planted[start:start + size]
                assert (block // size).unique().numel() == 1, (d, size, planted.tolist())


def planted_tree(d: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A random tree over ``d`` positions (each position hangs from an earlier one of a random
    order) and a similarity that decreases with the distance in it: its maximum spanning tree is
    the planted tree. Returns (similarity (d, d), edges)."""
    g = torch.Generator().manual_seed(seed)
    nodes = torch.randperm(d, generator=g).tolist()
    edges = [(nodes[torch.randint(0, i, (1,), generator=g).item()], nodes[i]) for i in range(1, d)]
    distance = torch.full((d, d), float(d))
    distance.fill_diagonal_(0.0)
    for a, b in edges:
        distance[a, b] = distance[b, a] = 1.0
    for k in range(d):  # Floyd-Warshall
        distance = torch.minimum(distance, distance[:, k:k + 1] + distance[k:k + 1, :])
    return (1.0 / (1.0 + distance)).fill_diagonal_(0.0).double(), edges


@pytest.mark.parametrize("d", [2, 7, 16, 30])
def test_chow_liu_order_reads_the_maximum_spanning_tree_depth_first(d):
    """Every subtree of the planted tree (hung from the order's first position, the most
    connected one) is one contiguous run of the order, and each run starts at its subtree's root."""
    similarity, edges = planted_tree(d, seed=d)
    order = chow_liu_order(similarity)
    assert sorted(order.tolist()) == list(range(d))
    root = order[0].item()
    assert root == similarity.sum(1).argmax().item()
    neighbours = {i: set() for i in range(d)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)

    def subtree(node: int, parent: int) -> set[int]:
        return {node}.union(*(subtree(child, node) for child in neighbours[node] - {parent}))

    position = {node: i for i, node in enumerate(order.tolist())}
    stack = [(root, -1)]
    while stack:
        node, parent = stack.pop()
        spots = sorted(position[n] for n in subtree(node, parent))
        assert spots == list(range(spots[0], spots[0] + len(spots))) and spots[0] == position[node]
        stack.extend((child, node) for child in neighbours[node] - {parent})
    randomized = [chow_liu_order(similarity, noise=1.0, seed=s) for s in range(3)]
    assert all(sorted(o.tolist()) == list(range(d)) for o in randomized)
    if d > 2:
        assert len({tuple(o.tolist()) for o in randomized}) > 1


@pytest.mark.parametrize("d", [8, 12, 16])
def test_chow_liu_matching_coarsens_the_tree_by_its_heaviest_edges(d):
    """A planted Chow-Liu tree that is a path over shuffled positions, whose link ``(i, i + 1)``
    weighs ``2^-l`` with ``l`` the highest bit in which ``i`` and ``i + 1`` differ: heavy-edge
    matching joins the links of weight 1 first, then 1/2, ..., so every level-l block of the order
    is a run of ``2^l`` consecutive nodes of the path starting at a multiple of ``2^l``."""
    g = torch.Generator().manual_seed(d)
    node = torch.randperm(d, generator=g)  # the position that holds node i of the path
    link = torch.tensor([2.0 ** -((i ^ (i + 1)).bit_length() - 1) for i in range(d - 1)], dtype=torch.float64)
    path = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d):  # other pairs: half the weakest link between them, so the path is the maximum spanning tree
        for j in range(i + 1, d):
            path[i, j] = path[j, i] = link[i] if j == i + 1 else 0.5 * link[i:j].min()
    similarity = torch.empty_like(path)
    similarity[node.view(-1, 1), node.view(1, -1)] = path
    order = chow_liu_matching_order(similarity)
    assert sorted(order.tolist()) == list(range(d))
    along = torch.argsort(node)[order]  # the path node at every place of the order
    for size in (2, 4, 8):
        for start in range(0, d - size + 1, size):
            block = along[start:start + size].sort().values
            assert block[0] % size == 0 and torch.equal(block, torch.arange(block[0], block[0] + size)), along.tolist()
    randomized = [chow_liu_matching_order(similarity, noise=1.0, seed=s) for s in range(3)]
    assert all(sorted(o.tolist()) == list(range(d)) for o in randomized)
    assert len({tuple(o.tolist()) for o in randomized}) > 1


def test_chow_liu_matching_follows_tree_edges_not_the_mean_mi():
    """Four tight pairs A, B, C, D. A-B and C-D are joined by one strong link each; A-C and B-D by
    a moderate MI on every position pair, so their mean MI is the higher one, but the Chow-Liu
    tree keeps only one of those links. Matching on the mean MI merges A with C; coarsening the
    Chow-Liu tree merges A with B, the regions its heavier edge joins."""
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]  # A, B, C, D
    mi = torch.full((8, 8), 0.05, dtype=torch.float64)
    for a, b in pairs:
        mi[a, b] = mi[b, a] = 1.0
    mi[1, 2] = mi[2, 1] = mi[5, 6] = mi[6, 5] = 0.9  # one strong link A-B and C-D
    for left, right in ((pairs[0], pairs[2]), (pairs[1], pairs[3])):  # every pair of A-C and B-D
        mi[list(left), [[r] for r in right]] = 0.5
        mi[list(right), [[l] for l in left]] = 0.5
    mi.fill_diagonal_(0.0)
    halves = lambda order: {frozenset(order[:4].tolist()), frozenset(order[4:].tolist())}
    assert halves(chow_liu_matching_order(mi)) == {frozenset(range(4)), frozenset(range(4, 8))}
    assert halves(balanced_tree_order(mi)) == {frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})}


def test_chow_liu_tree_follows_a_markov_chain():
    """Binary data from a Markov chain over shuffled columns: the Chow-Liu order walks the chain,
    so the order's neighbours are neighbours in the chain, except at the one turn back to the
    other side of the root."""
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 12
    chain = torch.zeros(n, d, dtype=torch.long)
    chain[:, 0] = torch.randint(0, 2, (n,), generator=g)
    for i in range(1, d):
        flip = (torch.rand(n, generator=g) < 0.1).long()
        chain[:, i] = chain[:, i - 1] ^ flip
    columns = torch.randperm(d, generator=g)  # chain link i sits in column columns[i]
    x = torch.empty_like(chain)
    x[:, columns] = chain
    model = HTConvAC((1, 1, d), Bernoulli(), 2, 2, structure="learned")
    order = learn_structure(model, x.view(n, 1, 1, d), trees=["chow_liu"])[0]
    link = torch.argsort(columns)[order]  # the chain link of every position of the order
    steps = (link[1:] - link[:-1]).abs()
    assert (steps == 1).sum().item() >= d - 2, link.tolist()


def test_trees_of_several_kinds_in_one_mixture():
    x, _ = copies_data(500, 16)
    model = HTConvAC((1, 1, 16), Bernoulli(), 2, 2, structure="learned", num_repetitions=3)
    order = learn_structure(model, x, trees=["chow_liu", "matching"])
    assert torch.equal(order[1], learn_structure(model, x)[0])  # the matching tree, not randomized
    assert not torch.equal(order[0], order[2])  # the second Chow-Liu tree is randomized
    with pytest.raises(ValueError, match="trees must be a non-empty list of matching / chow_liu / chow_liu_matching"):
        learn_structure(model, x, trees=["chow-liu"])
    coarsened = learn_structure(model, x, trees=["chow_liu_matching", "matching"])
    assert torch.equal(coarsened[1], order[1])  # the kinds share the data's MI, built independently
    level_one = {frozenset(coarsened[0, i:i + 2].tolist()) for i in range(0, 16, 2)}
    assert {frozenset(p.tolist()) for p in copies_data(500, 16)[1]} <= level_one  # the copies are the tree's edges


def test_ensemble_members_learn_their_trees_from_bootstrap_samples():
    x, _ = copies_data(300, 16, seed=3)
    x = x ^ (torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) < 0.3).long()  # weaker pairs: samples differ
    mixture = HTConvAC((1, 1, 16), Bernoulli(), 2, 2, structure="learned", num_repetitions=4)
    single = HTConvAC((1, 1, 16), Bernoulli(), 2, 2, structure="learned", num_repetitions=2)
    order = learn_structure(mixture, x, seed=5, trees=["chow_liu", "matching"], members=2).clone()
    # member 0 is the mixture learned alone; member 1 starts the kinds again, on its own bootstrap sample
    assert torch.equal(order[:2], learn_structure(single, x, seed=5, trees=["chow_liu", "matching"]))
    sample = x[torch.from_numpy(np.random.default_rng([5, 1]).integers(len(x), size=len(x)))]
    assert torch.equal(order[2:], learn_structure(single, sample, seed=5, trees=["chow_liu", "matching"]))
    assert not torch.equal(order[0], order[2])
    assert torch.equal(order, learn_structure(mixture, x, seed=5, trees=["chow_liu", "matching"], members=2))
    # one tree per member: the kinds still alternate over the repetitions, none randomized
    alone = learn_structure(mixture, x, seed=5, trees=["chow_liu", "matching"], members=4)
    tree = HTConvAC((1, 1, 16), Bernoulli(), 2, 2, structure="learned")
    assert torch.equal(alone[0], order[0])
    assert torch.equal(alone[1], learn_structure(tree, sample, seed=5, trees=["matching"])[0])
    with pytest.raises(ValueError, match="members must divide num_repetitions.*3 members for 4"):
        learn_structure(mixture, x, members=3)


def test_same_seed_and_data_give_the_same_structure_and_noise_varies_repetitions():
    x, _ = copies_data(500, 16)
    model = HTConvAC((1, 1, 16), Bernoulli(), 2, 2, structure="learned", num_repetitions=3)
    first = learn_structure(model, x, seed=1).clone()
    assert torch.equal(first, learn_structure(model, x, seed=1))
    assert not torch.equal(first, learn_structure(model, x, seed=2))
    assert not torch.equal(first[1], first[2])  # randomized trees for the other repetitions


def test_images_and_gaussian_leaves_and_patches():
    torch.manual_seed(0)
    x = torch.rand(200, 3, 5, 4)
    x[:, :, 2] = x[:, :, 1] + 0.01 * torch.randn(200, 3, 4)  # rows 1 and 2 copy each other
    model = HTConvAC((3, 5, 4), Gaussian(), 2, 2, patch_size=2, structure="learned", num_repetitions=2)
    order = learn_structure(model, x)
    assert order.shape == (2, 6) and all(sorted(o.tolist()) == list(range(6)) for o in order)
    assert model.grids[0] == (2, 6) and model.log_prob(x[:4]).shape == (4,)
    x[0, 0, 0, 0] = float("nan")  # a missing value is left out of the statistics
    learn_structure(model, x)


def test_structure_survives_save_and_load_without_data(tmp_path):
    x, _ = copies_data(300, 10)
    kwargs = dict(in_shape=[1, 1, 10], leaf={"name": "bernoulli"}, num_components=2, channels=3,
                  structure="learned", num_repetitions=2)
    model = create_model("ht", **kwargs)
    learn_structure(model, x)
    # state dict
    fresh = create_model("ht", **kwargs)
    assert not torch.equal(fresh.order, model.order)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.order, model.order)
    assert torch.allclose(fresh.log_prob(x[:5]), model.log_prob(x[:5]))
    # the zoo's safetensors format
    path = tmp_path / "m.safetensors"
    save_weights(path, model, "ht", kwargs)
    loaded = load_into(create_model("ht", **kwargs), read_weights(path), "test")
    assert torch.equal(loaded.order, model.order)


def test_set_order_rejects_what_is_not_a_permutation():
    model = HTConvAC((1, 1, 4), Categorical(3), 2, 2, structure="learned", num_repetitions=2)
    with pytest.raises(ValueError, match="permutation"):
        model.set_order(torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="permutation"):
        model.set_order(torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="structure='learned'"):
        HTConvAC((1, 1, 4), Categorical(3), 2, 2).set_order(torch.arange(4).view(1, 4))
    with pytest.raises(ValueError, match="num_repetitions"):
        HTConvAC((1, 1, 4), Categorical(3), 2, 2, num_repetitions=2)
    with pytest.raises(ValueError, match="power of two"):
        HTConvAC((1, 1, 4), Categorical(3), 2, 2, pool=3, structure="learned")
    with pytest.raises(ValueError, match="structure must be"):
        HTConvAC((1, 1, 4), Categorical(3), 2, 2, structure="chow-liu")


def test_training_learns_the_structure_from_the_training_split():
    import lightning as L

    from convac import ConvACModule
    from convac.data import create_datamodule

    datamodule = create_datamodule("digits")
    kwargs = dict(in_shape=[1, 8, 8], leaf={"name": "categorical", "num_values": 17}, num_components=2, channels=2,
                  structure="learned", num_repetitions=2)
    module = ConvACModule("ht", kwargs, structure_learning={"seed": 3})
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=datamodule)
    expected = learn_structure(create_model("ht", **kwargs), datamodule.split("train")[0], seed=3)
    assert torch.equal(module.model.order, expected) and module.structure_seconds > 0
    with pytest.raises(ValueError, match="structure_learning.trees"):
        ConvACModule("ht", kwargs, structure_learning={"trees": ["matching", "random"]})
