"""Structure learning: a balanced binary dimension tree over the level-0 positions, from data.

A ConvAC with ``structure="learned"`` is an HT over a *sequence* of positions whose order is
learned from the training split: the regular 1x2 product pooling of that sequence is a balanced
binary tree, and the order decides which positions share a region at every level. The builders
start from ``MI[i, j]``, the empirical mutual information of every pair of positions (values
quantized to at most ``bins`` levels; a position with several variables takes the mean over its
variable pairs), and put strongly dependent positions in the same regions low in the tree:

* ``"matching"``, *balanced hierarchical matching* (the agglomerative clustering of hidden
  Chow-Liu trees, Liu & Van den Broeck, NeurIPS 2021, and of the variable splits of LearnSPN,
  Gens & Domingos, ICML 2013, made balanced): level by level, the regions are paired by a greedy
  maximum-weight matching on the mean MI between their positions (average linkage; by default
  the MI normalized by ``sqrt(H[i] H[j])``), and the order is the left-to-right leaf order of the
  final tree. The pooling schedule fixes the tree's shape: at level ``l`` every region holds
  ``2^l`` positions except possibly the last one. The matching keeps that invariant: when the
  number of regions is odd, the partial region (or, when all are full, the least connected one)
  stays unpaired, and a merged region that holds the partial one is placed last.
* ``"chow_liu"``: the Chow-Liu tree (the maximum spanning tree of the MI in nats, the best tree
  of pairwise dependencies in likelihood; Chow & Liu, IEEE Trans. Inf. Theory 1968), read in
  depth-first preorder from its most connected position, the strongest edge first. Every subtree
  of the Chow-Liu tree is then a contiguous run of the order, so the balanced pooling merges the
  neighbours of the Chow-Liu tree first, and the chains of dependencies that matching on pairs
  cuts between regions stay together.
* ``"chow_liu_matching"``: the Chow-Liu tree (of the MI in nats) coarsened by the matching: the
  regions are paired level by level as in ``"matching"``, on the mean over their position pairs
  of the MI of the Chow-Liu edge between them (0 for a pair without one) plus ``1e-3`` times
  their MI (heavy-edge matching, as multilevel graph partitioning coarsens a graph): the regions
  that the heaviest edges of the tree join merge first, wherever those edges lie in the
  depth-first order.

A mixture (``num_repetitions = R``) takes its trees' kinds from a list, cycled; the first tree of
a kind is deterministic, the later ones of the same kind randomized (``noise``). A mixture fitted
as an ensemble of ``G`` members (:mod:`convac.training.ensemble`) learns every member's trees
from a data set of its own: member 0 from the training split, member ``g >= 1`` from a bootstrap
sample of it (its rows drawn with replacement; the structures of bagging, Breiman 1996); a kind
is randomized only when built before for the same member.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from convac.errors import InvalidValueError
from convac.validation import check_members


def quantize(values: torch.Tensor, discrete: bool, bins: int) -> tuple[torch.Tensor, int]:
    """Codes in ``[0, levels)`` for MI estimation: ``values`` (N, D) float, NaN = missing ->
    ((N, D) long with ``-1`` where missing, levels).

    Discrete data with at most ``bins`` values keeps its values; with more, it is cut into
    ``bins`` equal-width bins of its range; continuous data into ``bins`` bins at the empirical
    quantiles of each variable."""
    if bins < 2:
        raise InvalidValueError(f"bins must be at least 2, got {bins}")
    missing = torch.isnan(values)
    if discrete:
        low, high = float(values[~missing].min()), float(values[~missing].max())
        width = max(1.0, (high - low + 1) / bins)
        codes = ((values - low) / width).floor().nan_to_num(0).long().clamp_(0, bins - 1)
        levels = min(bins, int(high - low) + 1)
    else:
        cuts = torch.nanquantile(values, torch.linspace(0, 1, bins + 1, dtype=values.dtype)[1:-1], dim=0)  # (bins-1, D)
        codes = (values.unsqueeze(-1) > cuts.t().unsqueeze(0)).sum(-1)
        levels = bins
    return codes.masked_fill_(missing, -1), levels


def pairwise_mutual_information(
    codes: torch.Tensor, levels: int, pseudocount: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MI[i, j]`` in nats of every pair of columns of ``codes`` (N, D) long in ``[-1, levels)``
    (``-1`` missing: a pair counts the rows where both are observed) and the normalized
    ``MI[i, j] / sqrt(H[i] H[j])`` in ``[0, 1]`` (the geometric normalized MI, Strehl & Ghosh,
    JMLR 2002: a near-deterministic relation between two low-entropy variables, such as rare
    values of one-hot codes, then weighs as much as one between high-entropy ones) -> two
    (D, D) float64, diagonal 0.

    Joint counts of all pairs at once: ``O^T O`` with ``O`` the (N, D * levels) one-hot matrix;
    ``pseudocount`` is added to every joint cell (Laplace smoothing)."""
    n, d = codes.shape
    onehot = torch.zeros(n, d, levels, dtype=torch.float32)
    onehot.scatter_(2, codes.clamp_min(0).unsqueeze(-1), (codes >= 0).unsqueeze(-1).float())
    flat = onehot.view(n, d * levels)
    joint = (flat.t() @ flat).double().view(d, levels, d, levels).permute(0, 2, 1, 3) + pseudocount  # (D, D, v, v)
    joint = joint / joint.sum((2, 3), keepdim=True)
    left, right = joint.sum(3, keepdim=True), joint.sum(2, keepdim=True)
    mi = (joint * (joint.log() - left.log() - right.log())).sum((2, 3)).fill_diagonal_(0.0).clamp_min_(0.0)
    h_left, h_right = -(left * left.log()).sum((2, 3)), -(right * right.log()).sum((2, 3))
    return mi, mi / (h_left * h_right).sqrt().clamp_min(1e-12)


def position_mutual_information(
    patches: torch.Tensor, discrete: bool, bins: int = 8, max_rows: int = 10_000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pairwise MI (nats) and normalized MI between positions: ``patches`` (N, P, V) float,
    the ``V`` variables of every position (NaN = missing or padding) -> two (P, P) float64. At
    most ``max_rows`` rows are used (a subset drawn with ``seed``)."""
    n, p, v = patches.shape
    if n > max_rows:
        patches = patches[torch.from_numpy(np.random.default_rng(seed).choice(n, max_rows, replace=False))]
    codes, levels = quantize(patches.reshape(len(patches), p * v).double(), discrete, bins)
    mi, nmi = pairwise_mutual_information(codes, levels)
    return mi.view(p, v, p, v).mean((1, 3)), nmi.view(p, v, p, v).mean((1, 3))


def balanced_tree_order(similarity: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The leaf order (P,) long of a balanced binary tree over ``P`` positions, built by greedy
    matching on ``similarity`` (P, P), symmetric, higher = merge first (module docstring).

    ``noise > 0`` multiplies every region similarity by ``exp(noise * g)``, ``g`` standard
    Gumbel noise drawn with ``seed``, at every level: a randomized tree (used for the other
    repetitions of a mixture)."""
    sim = similarity.double().clone()
    count = sim.shape[0]
    if sim.shape != (count, count):
        raise InvalidValueError(f"similarity must be a square (P, P) matrix, got {tuple(similarity.shape)}")
    rng = np.random.default_rng(seed)
    regions: list[list[int]] = [[i] for i in range(count)]
    size = 1  # the size of a full region at this level
    while len(regions) > 1:
        n = len(regions)
        partial = n - 1 if len(regions[-1]) < size else None
        scores = sim.numpy().copy()
        if noise > 0:
            gumbel = rng.gumbel(size=(n, n))
            scores = scores * np.exp(noise * (gumbel + gumbel.T) / 2)
        np.fill_diagonal(scores, -np.inf)
        unpaired = None
        if n % 2:  # one region waits a level: the partial one, else the least connected
            unpaired = partial if partial is not None else int(np.argmin(scores.max(1)))
            scores[unpaired, :] = scores[:, unpaired] = -np.inf
        pairs = _greedy_matching(scores, (n - (unpaired is not None)) // 2)
        # the full region first and the pair holding the partial one last: blocks stay aligned
        # with the pooling (module docstring)
        members = [[b, a] if a == partial else [a, b] for a, b in pairs]
        members.sort(key=lambda pair: partial in pair)
        if unpaired is not None:
            members.append([unpaired])
        sizes = [len(r) for r in regions]
        regions = [sum((regions[i] for i in group), []) for group in members]
        sim = _average_linkage(sim, members, sizes)
        size *= 2
    return torch.tensor(regions[0], dtype=torch.long)


def chow_liu_order(mutual_information: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The leaf order (P,) long of the Chow-Liu tree of ``mutual_information`` (P, P), symmetric,
    in nats (module docstring): its maximum spanning tree (Prim's algorithm), read depth-first
    from the position with the largest total MI, children by decreasing MI to their parent.

    ``noise > 0`` multiplies every MI by ``exp(noise * g)``, ``g`` standard Gumbel noise drawn
    with ``seed``, and starts from a random position: a randomized tree (for the other
    repetitions of a mixture)."""
    weights, root, children = _chow_liu_tree(mutual_information, noise, seed)
    order, stack = [], [root]
    while stack:  # depth-first preorder: every subtree is a contiguous run
        node = stack.pop()
        order.append(node)
        stack.extend(sorted(children[node], key=lambda child: weights[node, child]))  # strongest popped first
    return torch.tensor(order, dtype=torch.long)


#: The weight of the MI beside the Chow-Liu edges in :func:`chow_liu_matching_order`. Low in the
#: tree it only orders the pairs of regions that no edge of the tree joins; as the average linkage
#: divides the few edges between two regions by their ``size^2`` position pairs, its share grows
#: by about 4x a level (on plants, 1e-6 instead changes one region of 8 and those above it).
TIE_BREAK = 1e-3


def chow_liu_matching_order(mutual_information: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The leaf order (P,) long of the Chow-Liu tree of ``mutual_information`` (P, P), symmetric,
    in nats, coarsened into a balanced binary tree by :func:`balanced_tree_order` (module
    docstring): the similarity of two positions is the MI of the tree edge between them (0 when
    there is none) plus :data:`TIE_BREAK` times their MI, so that level by level the regions
    joined by the heaviest edges of the tree merge (heavy-edge matching, the coarsening of
    multilevel graph partitioning; Karypis & Kumar, SIAM J. Sci. Comput. 1998).

    ``noise > 0`` randomizes the tree as in :func:`chow_liu_order`."""
    weights, _, children = _chow_liu_tree(mutual_information, noise, seed)
    edges = np.zeros_like(weights)
    for parent, kids in enumerate(children):
        edges[parent, kids] = edges[kids, parent] = weights[parent, kids]
    return balanced_tree_order(torch.from_numpy(edges + TIE_BREAK * weights))


def _chow_liu_tree(mutual_information: torch.Tensor, noise: float, seed: int) -> tuple[np.ndarray, int, list[list[int]]]:
    """The (noisy) weights (P, P), the root and the children of every position of the Chow-Liu
    tree of ``mutual_information`` (:func:`chow_liu_order`)."""
    weights = mutual_information.double().numpy().copy()
    count = len(weights)
    if weights.shape != (count, count):
        raise InvalidValueError(f"mutual_information must be a square (P, P) matrix, got {tuple(mutual_information.shape)}")
    rng = np.random.default_rng(seed)
    if noise > 0:
        gumbel = rng.gumbel(size=(count, count))
        weights = weights * np.exp(noise * (gumbel + gumbel.T) / 2)
    root = int(rng.integers(count)) if noise > 0 else int(np.argmax(weights.sum(1)))
    return weights, root, _maximum_spanning_tree(weights, root)


def _maximum_spanning_tree(weights: np.ndarray, root: int) -> list[list[int]]:
    """Prim's algorithm on the dense (P, P) ``weights`` from ``root``: the children of every
    position in the maximum spanning tree hung from ``root``."""
    count = len(weights)
    in_tree = np.zeros(count, dtype=bool)
    in_tree[root] = True
    best, parent = weights[root].copy(), np.full(count, root)  # the strongest edge into the tree so far
    children: list[list[int]] = [[] for _ in range(count)]
    for _ in range(count - 1):
        node = int(np.argmax(np.where(in_tree, -np.inf, best)))
        in_tree[node] = True
        children[parent[node]].append(node)
        closer = ~in_tree & (weights[node] > best)
        best[closer], parent[closer] = weights[node, closer], node
    return children


def _assignment(members: list[list[int]], n: int) -> torch.Tensor:
    """(len(members), n) float64: 1 where region ``g`` of the old level is part of new region ``i``."""
    assign = torch.zeros(len(members), n, dtype=torch.float64)
    for i, group in enumerate(members):
        assign[i, group] = 1.0
    return assign


def _greedy_matching(scores: np.ndarray, num_pairs: int) -> list[tuple[int, int]]:
    """``num_pairs`` disjoint pairs ``(a, b)``, ``a < b``, taken by decreasing score."""
    upper = np.triu_indices(len(scores), k=1)
    values = scores[upper]
    taken = np.zeros(len(scores), dtype=bool)
    pairs = []
    for k in np.argsort(-values, kind="stable"):
        a, b = upper[0][k], upper[1][k]
        if taken[a] or taken[b] or not np.isfinite(values[k]):
            continue
        taken[a] = taken[b] = True
        pairs.append((int(a), int(b)))
        if len(pairs) == num_pairs:
            break
    return pairs


def _average_linkage(sim: torch.Tensor, members: list[list[int]], sizes: list[int]) -> torch.Tensor:
    """Similarity of merged regions: the mean over position pairs, i.e. the size-weighted mean
    of the old region similarities. (n, n) -> (m, m) for ``m = len(members)``."""
    assign = _assignment(members, sim.shape[0]) * torch.tensor(sizes, dtype=torch.float64)
    total = assign.sum(1, keepdim=True)
    new = (assign @ sim @ assign.t()) / (total * total.t())
    return new.fill_diagonal_(0.0)


#: The tree builders of :func:`learn_structure`, by name (module docstring).
TREES = ("matching", "chow_liu", "chow_liu_matching")


def check_trees(trees: Sequence[str]) -> list[str]:
    """``trees`` as a list, or a ValueError if it is empty or names a builder not in :data:`TREES`."""
    trees = [trees] if isinstance(trees, str) else list(trees)
    if not trees or any(kind not in TREES for kind in trees):
        raise InvalidValueError(f"structure_learning.trees must be a non-empty list of {' / '.join(TREES)}, got {trees}")
    return trees


def learn_structure(
    model,
    x: torch.Tensor,
    seed: int = 0,
    bins: int = 8,
    max_rows: int = 10_000,
    noise: float = 1.0,
    normalized: bool = True,
    trees: Sequence[str] = ("matching",),
    members: int = 1,
) -> torch.Tensor:
    """Learn the order of every repetition of a ``structure="learned"`` ConvAC from data ``x``
    (N, C, H, W) (the training split; NaN marks missing values of float data) and set it
    (:meth:`ConvAC.set_order`). Repetition ``r`` is a tree of kind ``trees[r % len(trees)]``
    (:data:`TREES`) over the MI of the patch positions: the first tree of each kind as built, the
    later ones randomized (``noise``, seeded by ``seed`` and ``r``). ``normalized`` matches on
    the normalized MI (the default), else on the MI in nats; the Chow-Liu tree is always the MI's.
    ``members``: the repetitions form that many ensemble members (groups of ``R / members``
    consecutive ones), member ``g >= 1`` learned from a bootstrap sample of ``x`` seeded by
    ``seed`` and ``g``, a kind randomized only when built before for the same member.
    Returns the order (R, P_img). Deterministic for a seed and the data.

    Raises ValueError for a model of another structure, data of another shape, an unknown tree,
    or ``members`` that does not divide ``R``."""
    if model.structure != "learned":
        raise InvalidValueError(f"learn_structure needs a model with structure='learned', got structure={model.structure!r}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.in_shape):
        raise InvalidValueError(f"expected training data of shape (N, {', '.join(map(str, model.in_shape))}), got {tuple(x.shape)}")
    trees = check_trees(trees)
    check_members(members, model.num_repetitions, name="members")
    patches = model._to_patches(x.double(), float("nan")).transpose(0, 1)  # (N, P_img, V), padding NaN
    size = model.num_repetitions // members
    order = []
    for member in range(members):
        rows = patches
        if member > 0:  # a bootstrap sample of the training split
            rows = patches[torch.from_numpy(np.random.default_rng([seed, member]).integers(len(patches), size=len(patches)))]
        mi, nmi = position_mutual_information(rows, model.leaf_spec.is_discrete, bins, max_rows, seed)
        built: set[str] = set()
        for r in range(member * size, (member + 1) * size):
            kind = trees[r % len(trees)]
            tree_noise = noise if kind in built else 0.0  # a kind built before: randomized
            built.add(kind)
            if kind == "matching":
                order.append(balanced_tree_order(nmi if normalized else mi, noise=tree_noise, seed=seed * 1000 + r))
            else:
                builder = chow_liu_order if kind == "chow_liu" else chow_liu_matching_order
                order.append(builder(mi, noise=tree_noise, seed=seed * 1000 + r))
    order = torch.stack(order)
    model.set_order(order)
    return order
