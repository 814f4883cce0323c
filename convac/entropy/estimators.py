"""Estimators of the level entropies, mapping gaps and bounds of a ConvAC (DESIGN section 2).

With normalized leaves and simplex weights a ConvAC is a latent tree: ``Z_{l,i}`` is the channel
chosen at position ``i`` of level ``l`` (``Z_{0,i}`` the leaf component). This module reads the
model only through its public queries (``sample``, ``level_log_probs``, ``latent_marginals``,
``sample_below``, ``leaf_entropy``) and its weights (``sums[l].weights()``, ``root``).

All entropies are in nats and summed over positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from convac.model import ConvAC


def categorical_entropy(log_p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``H(p) = -sum p log p`` over ``dim`` of normalized log-probabilities (``0 log 0 = 0``)."""
    log_p = log_p.clamp_min(torch.finfo(log_p.dtype).min)  # -inf -> a finite value of weight 0
    return -(log_p.exp() * log_p).sum(dim)


@dataclass
class SampleStatistics:
    """Per-sample integrands of the Monte Carlo estimators, each a (n,) tensor (or (n, P))."""

    levels: list[torch.Tensor]  # -sum_i log node_{l,i,Z_{l,i}}(x_S), l = 0..L: E = H^l
    log_px: torch.Tensor  # -log P(x): E = H(X)
    log_px_given_y: torch.Tensor  # -log P(x | y): E = H(X | Y)
    gaps: list[torch.Tensor]  # (n, P_{l-1}) for l = 1..L: H(w[j, :]) - H(P(A | x_S, j)), E = Delta_R
    root_gap: torch.Tensor  # H(pi_L) - H(P(Z_L | x)): E = Delta_root

    @staticmethod
    def concatenate(chunks: list["SampleStatistics"]) -> "SampleStatistics":
        first = chunks[0]
        return SampleStatistics(
            levels=[torch.cat([c.levels[i] for c in chunks]) for i in range(len(first.levels))],
            log_px=torch.cat([c.log_px for c in chunks]),
            log_px_given_y=torch.cat([c.log_px_given_y for c in chunks]),
            gaps=[torch.cat([c.gaps[i] for c in chunks]) for i in range(len(first.gaps))],
            root_gap=torch.cat([c.root_gap for c in chunks]),
        )


@torch.no_grad()
def one_pass_statistics(model: ConvAC, flows: list[torch.Tensor], n: int, generator: torch.Generator) -> SampleStatistics:
    """Draw ``n`` exact ancestral samples with their latents and run one bottom-up pass.

    * level ``l``: ``-sum_i log node_{l,i,Z_{l,i}}(x_{S_i})``, unbiased for ``H^l = H(X | Z_l)``;
    * mapping ``R`` (sum node at position ``c`` of grid ``l-1``, parent channel ``j = Z_{l,parent(c)}``):
      ``H(w_c[j, :]) - H(P(A | x_S, j))`` with ``P(a | x_S, j) ∝ w_c[j, a] node_{l-1,c,a}(x_S)``,
      unbiased for ``Delta_R = I(X_S; A_R | Z_parent)`` and bounded by ``log K_{l-1}``
      (the Rao-Blackwellized gap);
    * root: ``H(pi_L) - H(P(Z_L | x))`` with the class-averaged root weights ``pi_L``.

    ``flows`` is ``model.latent_marginals()``.
    """
    log_prior = model.log_class_prior()
    y = torch.multinomial(log_prior.exp(), n, replacement=True, generator=generator)
    x, latents = model.sample(n, y=y, generator=generator, return_latents=True)
    # (n, K_l, H_l, W_l) views of position-major storage: back to (P_l, n, K_l) without copies;
    # exact samples need no value checks
    with model.validation(False):
        levels = [v.permute(2, 3, 0, 1).reshape(-1, n, v.shape[1]) for v in model.level_log_probs(x)]
    # (P_l, n): Z_{l,i} of every sample; -1 at the positions of the repetitions not chosen,
    # whose terms are left out (their nodes are not on the sample's path)
    chosen = [z.flatten(1).t() for z in latents]

    level_terms = [-(v.gather(2, z.clamp_min(0).unsqueeze(2)).squeeze(2) * (z >= 0)).sum(0) for v, z in zip(levels, chosen)]

    gaps = []
    for level in range(1, model.num_levels + 1):
        layer, pool = model.sums[level - 1], model.pools[level - 1]
        parent = pool.expand(latents[level]).flatten(1).t()  # (P, n) channel j of each sum node's parent
        log_w = layer.log_weights().expand(layer.num_positions, -1, -1)  # (P, K_l, K_{l-1})
        positions = torch.arange(layer.num_positions, device=x.device).unsqueeze(1)
        prior = log_w[positions, parent.clamp_min(0)]  # (P, n, K_{l-1}): log w_c[j, :]
        prior_entropy = categorical_entropy(log_w)[positions, parent.clamp_min(0)]  # (P, n): H(w_c[j, :])
        posterior = torch.log_softmax(prior.add_(levels[level - 1]), dim=-1)
        gaps.append(((prior_entropy - categorical_entropy(posterior)) * (parent >= 0)).t())  # (n, P)

    root_log_w = model.root.log_weights()[0]  # (classes, R * K_L)
    # the root's input channel r * K_L + k is channel k of repetition r (grid (R, 1) on top)
    top = levels[-1].transpose(0, 1).reshape(n, -1)  # (n, R * K_L)
    log_px_given_class = torch.logsumexp(root_log_w.unsqueeze(0) + top.unsqueeze(1), dim=-1)  # (n, classes)
    log_px = torch.logsumexp(log_px_given_class + log_prior, dim=1)
    log_pi_top = flows[-1].flatten(1).t().flatten().log()  # (R * K_L,) in the root's channel order
    root_gap = categorical_entropy(log_pi_top) - categorical_entropy(torch.log_softmax(log_pi_top + top, dim=1))
    return SampleStatistics(
        levels=level_terms,
        log_px=-log_px,
        log_px_given_y=-log_px_given_class.gather(1, y.unsqueeze(1)).squeeze(1),
        gaps=gaps,
        root_gap=root_gap,
    )


@torch.no_grad()
def exact_leaf_entropy(model: ConvAC, flows: list[torch.Tensor]) -> float:
    """``H^0 = sum_i sum_d pi_{0,i}(d) H(x_i | d)``, exact (closed-form leaf entropies)."""
    flow = flows[0].flatten(1).t()  # (P_0, M)
    return float((flow * model.leaf_entropy()).sum())


@torch.no_grad()
def mapping_caps(model: ConvAC, flows: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """Caps of every mapping: ``cap_R = sum_j pi_parent(j) H(w_R[j, :])``.

    Returns ``[(H_{l-1}, W_{l-1})]`` for ``l = 1..L`` and the root's ``H(pi_L)``.
    """
    caps = []
    for level in range(1, model.num_levels + 1):
        layer, pool = model.sums[level - 1], model.pools[level - 1]
        parent = pool.expand(flows[level]).flatten(1).t()  # (P, K_l)
        row_entropy = categorical_entropy(layer.log_weights()).expand(layer.num_positions, -1)  # (P, K_l)
        caps.append((parent * row_entropy).sum(1).view(layer.grid))
    return caps, float(categorical_entropy(flows[-1].flatten().log()))


@torch.no_grad()
def analytic_bounds(model: ConvAC, flows: list[torch.Tensor]) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Bounds on ``H^l`` (``l = 0..L``) and ``H(X)`` at no sampling cost, from the recursion
    ``sum_a w_a H(child_a) <= H(sum_a w_a child_a) <= sum_a w_a H(child_a) + H(w)``
    applied node by node (products add their children's entropies)."""
    low = high = model.leaf_entropy()  # (P_0, M)
    bounds = [_weighted(flows[0], low, high)]
    for level in range(1, model.num_levels + 1):
        layer, pool = model.sums[level - 1], model.pools[level - 1]
        w = layer.position_weights()  # (P, K_l, K_{l-1})
        mixed_low = torch.einsum("pja,pa->pj", w, low)
        mixed_high = torch.einsum("pja,pa->pj", w, high) + categorical_entropy(w.log())
        low, high = pool(mixed_low.unsqueeze(1))[:, 0], pool(mixed_high.unsqueeze(1))[:, 0]  # (P_l, K_l)
        bounds.append(_weighted(flows[level], low, high))
    pi_top = flows[-1].flatten(1).t()  # (R, K_L): P(repetition r, Z_L = k)
    top_low = float((pi_top * low).sum())
    top_high = float((pi_top * high).sum() + categorical_entropy(pi_top.flatten().log()))
    return bounds, (max(top_low, bounds[-1][0]), top_high)


def _weighted(flow: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[float, float]:
    """``sum_{i,k} pi_{l,i}(k) [low, high]_{i,k}`` with ``flow`` (K, H, W), bounds (P, K)."""
    pi = flow.flatten(1).t()
    return float((pi * low).sum()), float((pi * high).sum())


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
