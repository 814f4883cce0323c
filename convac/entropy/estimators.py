"""Estimators of the level entropies, mapping gaps and bounds of a ConvAC (DESIGN section 2).

With normalized leaves and simplex weights a ConvAC is a latent tree: ``Z_{l,i}`` is the channel
chosen at position ``i`` of level ``l`` (``Z_{0,i}`` the leaf component). This module reads the
model only through its public queries (``sample``, ``level_log_probs``, ``latent_marginals``,
``sample_below``, ``leaf_entropy``, ``log_class_prior``), the structure of its latent tree
(``parent_positions``, ``grids``, ``channels``, ``num_repetitions``, the product pooling
``pools``) and its weights (``sums[l].weights()``, ``log_weights()``, ``weight_rows()``,
``position_weights()``; ``root``), as documented on :class:`convac.model.ConvAC`.

All entropies are in nats and summed over positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convac.model import ConvAC


def categorical_entropy(log_p: torch.Tensor, dim: int = -1, p: torch.Tensor | None = None) -> torch.Tensor:
    """``H(p) = -sum p log p`` over ``dim`` of normalized log-probabilities (``0 log 0 = 0``);
    ``p``: the probabilities themselves where they are at hand (a sum layer's weights beside its
    log-weights), which saves the exponential."""
    log_p = log_p.clamp_min(torch.finfo(log_p.dtype).min)  # -inf -> a finite value of weight 0
    if p is None:
        return -log_p.exp().mul_(log_p).sum(dim)
    return -(p * log_p).sum(dim)


@dataclass
class SampleStatistics:
    """Per-sample integrands of the Monte Carlo estimators, each a (n,) tensor (or (n, P)); after
    :meth:`to_host`, float64 NumPy arrays."""

    levels: list[torch.Tensor]  # -sum_i log node_{l,i,Z_{l,i}}(x_S), l = 0..L: E = H^l
    log_px: torch.Tensor  # -log P(x): E = H(X)
    log_px_given_y: torch.Tensor  # -log P(x | y): E = H(X | Y)
    gaps: list[torch.Tensor]  # (n, P_{l-1}) for l = 1..L: H(w[j, :]) - H(P(A | x_S, j)), E = Delta_R
    root_gap: torch.Tensor  # H(pi_L) - H(P(Z_L | x)): E = Delta_root
    latent: torch.Tensor  # -log P(y, z), the sample's latent path: E = H(Y, Z) (latent_entropy)

    @staticmethod
    def concatenate(chunks: list["SampleStatistics"]) -> "SampleStatistics":
        first = chunks[0]
        if len(chunks) == 1:
            return first
        return SampleStatistics(
            levels=[torch.cat([c.levels[i] for c in chunks]) for i in range(len(first.levels))],
            log_px=torch.cat([c.log_px for c in chunks]),
            log_px_given_y=torch.cat([c.log_px_given_y for c in chunks]),
            gaps=[torch.cat([c.gaps[i] for c in chunks]) for i in range(len(first.gaps))],
            root_gap=torch.cat([c.root_gap for c in chunks]),
            latent=torch.cat([c.latent for c in chunks]),
        )

    def to_host(self) -> "SampleStatistics":
        """The same integrands as float64 NumPy arrays, read back in one transfer: the columns of
        one ``(n, L + 5 + sum_l P_{l-1})`` table."""
        columns = torch.stack([*self.levels, self.log_px, self.log_px_given_y, self.root_gap, self.latent], 1)
        table = torch.cat([columns, *self.gaps], 1).to("cpu", torch.float64).numpy()
        widths = [len(self.levels), 1, 1, 1, 1, *(g.shape[1] for g in self.gaps)]
        levels, log_px, log_px_given_y, root_gap, latent, *gaps = np.split(table, np.cumsum(widths)[:-1], axis=1)
        return SampleStatistics(levels=list(levels.T), log_px=log_px[:, 0], log_px_given_y=log_px_given_y[:, 0],
                                gaps=gaps, root_gap=root_gap[:, 0], latent=latent[:, 0])


@torch.no_grad()
def one_pass_statistics(
    model: ConvAC, flows: list[torch.Tensor], n: int, generator: torch.Generator, rows: list[torch.Tensor] | None = None
) -> SampleStatistics:
    """Draw ``n`` exact ancestral samples with their latents and run one bottom-up pass.

    * level ``l``: ``-sum_i log node_{l,i,Z_{l,i}}(x_{S_i})``, unbiased for ``H^l = H(X | Z_l)``;
    * mapping ``R`` (sum node at position ``c`` of grid ``l-1``, parent channel ``j = Z_{l,parent(c)}``):
      ``H(w_c[j, :]) - H(P(A | x_S, j))`` with ``P(a | x_S, j) ∝ w_c[j, a] node_{l-1,c,a}(x_S)``,
      unbiased for ``Delta_R = I(X_S; A_R | Z_parent)`` and bounded by ``log K_{l-1}``
      (the Rao-Blackwellized gap);
    * root: ``H(pi_L) - H(P(Z_L | x))`` with the class-averaged root weights ``pi_L``;
    * latents: ``-log P(y, z)`` of the class and every latent on the sample's path (the root's
      choice, every sum node's), whose exact mean is :func:`latent_entropy`: with the leaf term
      (mean ``H^0``) the control variates of the one-pass estimates, as
      ``-log P(x) = -log P(x | z) - log P(y, z) + log P(y, z | x)``.

    ``flows`` is ``model.latent_marginals()``, ``rows`` :func:`row_entropies` (computed when None).
    """
    rows = row_entropies(model) if rows is None else rows
    log_prior = model.log_class_prior()
    y = torch.multinomial(log_prior.exp(), n, replacement=True, generator=generator)
    x, latents = model.sample(n, y=y, generator=generator, return_latents=True)
    # (n, K_l, H_l, W_l) views of position-major storage: back to (P_l, n, K_l) without copies;
    # exact samples need no value checks
    with model.validation(False):
        levels = [v.permute(2, 3, 0, 1).reshape(-1, n, v.shape[1]) for v in model.level_log_probs(x)]
    # (P_l, n): Z_{l,i} of every sample; -1 at the positions of the repetitions not chosen, whose
    # terms are left out (their nodes are not on the sample's path); (P_l, n, 1) its gather index
    chosen = [z.flatten(1).t() for z in latents]
    on_path = [z >= 0 for z in chosen]
    chosen_index = [z.clamp_min(0).unsqueeze(2) for z in chosen]

    level_terms = [-(v.gather(2, i).squeeze(2) * a).sum(0) for v, i, a in zip(levels, chosen_index, on_path)]

    gaps = []
    latent = torch.zeros(n, dtype=torch.float64, device=x.device)
    for level, layer in enumerate(model.sums, start=1):
        parent = chosen[level].index_select(0, model.parent_positions(level))  # (P, n) channel j of each sum node's parent
        active = on_path[level - 1]  # (P, n) the sum node is on the path (exactly where its parent is)
        log_w = layer.log_weights()  # (P or 1, K_l, K_{l-1})
        k_child = log_w.shape[2]
        index = layer.weight_rows(parent, position_dim=0).flatten()  # row (position, j) of the flat weight table
        prior = log_w.reshape(-1, k_child).index_select(0, index).view(*parent.shape, k_child)  # (P, n, K_{l-1}): log w_c[j, :]
        prior_entropy = rows[level - 1].flatten().index_select(0, index).view(parent.shape)  # (P, n): H(w_c[j, :])
        chosen_log_w = prior.gather(2, chosen_index[level - 1]).squeeze(2)  # (P, n): log w_c[j, Z_{l-1,c}]
        latent -= (chosen_log_w * active).sum(0).double()
        posterior = torch.log_softmax(prior.add_(levels[level - 1]), dim=-1)
        gaps.append(((prior_entropy - categorical_entropy(posterior)) * active).t())  # (n, P)

    root_log_w = model.root.log_weights()[0]  # (classes, R * K_L)
    # the root's input channel r * K_L + k is channel k of repetition r (grid (R, 1) on top)
    top = levels[-1].transpose(0, 1).reshape(n, -1)  # (n, R * K_L)
    log_px_given_class = torch.logsumexp(root_log_w.unsqueeze(0) + top.unsqueeze(1), dim=-1)  # (n, classes)
    log_px = torch.logsumexp(log_px_given_class + log_prior, dim=1)
    pi_top = flows[-1].flatten(1).t().flatten()  # (R * K_L,) in the root's channel order
    log_pi_top = pi_top.log()
    root_gap = categorical_entropy(log_pi_top, p=pi_top) - categorical_entropy(torch.log_softmax(log_pi_top + top, dim=1))
    k_top = model.channels[-1]
    top_choice = latents[-1].flatten(1)  # (n, R): Z_L of the chosen repetition, -1 in the others
    offsets = torch.arange(0, top_choice.shape[1] * k_top, k_top, device=x.device)
    root_channel = torch.where(top_choice >= 0, top_choice + offsets, -1).amax(1)  # (n,) the root's input channel
    latent -= (root_log_w[y, root_channel] + log_prior[y]).double()
    return SampleStatistics(
        levels=level_terms,
        log_px=-log_px,
        log_px_given_y=-log_px_given_class.gather(1, y.unsqueeze(1)).squeeze(1),
        gaps=gaps,
        root_gap=root_gap,
        latent=latent,
    )


@torch.no_grad()
def latent_entropy(model: ConvAC, caps: list[torch.Tensor]) -> float:
    """``H(Y, Z)``, the exact joint entropy of the class and every latent of the tree (the mean
    of :attr:`SampleStatistics.latent`): ``H(Y) + sum_y P(y) H(w_root[y, :]) + sum`` of every
    mapping's cap (``cap_R = E[-log w_R[Z_parent, Z_R]]``, :func:`mapping_caps`)."""
    log_prior = model.log_class_prior()
    prior = log_prior.exp()
    root = (prior * categorical_entropy(model.root.log_weights()[0], p=model.root.weights()[0])).sum()
    return float(categorical_entropy(log_prior, p=prior)) + float(root) + sum(float(c.sum()) for c in caps)


@torch.no_grad()
def exact_leaf_entropy(model: ConvAC, flows: list[torch.Tensor]) -> float:
    """``H^0 = sum_i sum_d pi_{0,i}(d) H(x_i | d)``, exact (closed-form leaf entropies)."""
    flow = flows[0].flatten(1).t()  # (P_0, M)
    return float((flow * model.leaf_entropy()).sum())


@torch.no_grad()
def row_entropies(model: ConvAC) -> list[torch.Tensor]:
    """``H(w_c[j, :])`` of every sum node of fusion layers ``l = 1..L``: ``[(P or 1, K_l)]``."""
    return [categorical_entropy(layer.log_weights(), p=layer.weights()) for layer in model.sums]


@torch.no_grad()
def mapping_caps(
    model: ConvAC, flows: list[torch.Tensor], rows: list[torch.Tensor] | None = None
) -> tuple[list[torch.Tensor], float]:
    """Caps of every mapping: ``cap_R = sum_j pi_parent(j) H(w_R[j, :])``; ``rows`` are
    :func:`row_entropies` (computed when None).

    Returns ``[(H_{l-1}, W_{l-1})]`` for ``l = 1..L`` and the root's ``H(pi_L)``.
    """
    rows = row_entropies(model) if rows is None else rows
    caps = []
    for level, (layer, flow, row_entropy) in enumerate(zip(model.sums, flows[1:], rows), start=1):
        parent = flow.flatten(1).t().index_select(0, model.parent_positions(level))  # (P, K_l): pi of each sum node's parent
        caps.append((parent * row_entropy).sum(1).view(layer.grid))
    pi_top = flows[-1].flatten()
    return caps, float(categorical_entropy(pi_top.log(), p=pi_top))


@torch.no_grad()
def analytic_bounds(
    model: ConvAC, flows: list[torch.Tensor], rows: list[torch.Tensor] | None = None
) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Bounds on ``H^l`` (``l = 0..L``) and ``H(X)`` at no sampling cost, from the recursion
    ``sum_a w_a H(child_a) <= H(sum_a w_a child_a) <= sum_a w_a H(child_a) + H(w)``
    applied node by node (products add their children's entropies); ``rows`` are
    :func:`row_entropies` (computed when None)."""
    rows = row_entropies(model) if rows is None else rows
    bounds = model.leaf_entropy().unsqueeze(1).repeat(1, 2, 1)  # (P_0, 2, M): low and high (contiguous for bmm)
    weighted = [_weighted(flows[0], bounds)]
    for layer, pool, flow, row_entropy in zip(model.sums, model.pools, flows[1:], rows):
        mixed = torch.bmm(bounds, layer.position_weights().transpose(1, 2))  # (P, 2, K_l): sum_a w_a H(child_a)
        mixed[:, 1] += row_entropy  # + H(w)
        bounds = pool(mixed)  # (P_l, 2, K_l)
        weighted.append(_weighted(flow, bounds))
    pi_top = flows[-1].flatten(1).t()  # (R, K_L): P(repetition r, Z_L = k)
    top = (pi_top.unsqueeze(1) * bounds).sum((0, 2))  # (2,)
    top[1] += categorical_entropy(pi_top.flatten().log(), p=pi_top.flatten())
    values = torch.stack(weighted + [top]).tolist()  # one host read
    levels = [tuple(v) for v in values[:-1]]
    return levels, (max(values[-1][0], levels[-1][0]), values[-1][1])


def _weighted(flow: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``sum_{i,k} pi_{l,i}(k) [low, high]_{i,k}`` with ``flow`` (K, H, W), ``bounds`` (P, 2, K) -> (2,)."""
    return (flow.flatten(1).t().unsqueeze(1) * bounds).sum((0, 2))


@torch.no_grad()
def node_entropies(model: ConvAC, n: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``H(node_{l,i,k})`` for every node, with standard errors: ``[(K_l, H_l, W_l)] * 2``.

    Level 0 is exact. For ``l >= 1``: force channel ``k`` at every position of level ``l``,
    sample below (``sample_below``) and evaluate up to level ``l``; ``R * sum_l K_l`` batches of
    ``n`` (one per repetition ``r``, whose row of the grid it fills).
    """
    leaf = model.leaf_entropy().t().reshape(model.channels[0], *model.grids[0])
    results = [(leaf, torch.zeros_like(leaf))]
    for level in range(1, model.num_levels + 1):
        means, ses = [], []
        for k in range(model.channels[level]):
            forced = torch.full((n, *model.grids[level]), k, dtype=torch.long, device=leaf.device)
            terms = -model.level_log_probs(model.sample_below(level, forced, generator))[level][:, k]  # (n, H_l, W_l)
            if model.num_repetitions > 1:  # row r of the grid from repetition r's samples
                rows = [terms[:, 0]] + [
                    -model.level_log_probs(model.sample_below(level, forced, generator, repetition=r))[level][:, k, r]
                    for r in range(1, model.num_repetitions)
                ]
                terms = torch.stack(rows, 1)
            means.append(terms.mean(0))
            ses.append(terms.std(0) / n**0.5)
        results.append((torch.stack(means), torch.stack(ses)))
    return results
