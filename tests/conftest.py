"""Shared fixtures and helpers: tiny discrete models and exhaustive enumeration of their inputs."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def all_inputs(in_shape, num_values: int) -> torch.Tensor:
    """Every input of a discrete model: (num_values ** D, C, H, W) long, D = C * H * W."""
    d = int(torch.tensor(in_shape).prod())
    grid = list(itertools.product(range(num_values), repeat=d))
    return torch.tensor(grid, dtype=torch.long).view(-1, *in_shape)


@torch.no_grad()
def latent_log_joint(model, x: torch.Tensor, missing: torch.Tensor | None = None) -> torch.Tensor:
    """(N, num_classes, Z): ``log P(x, z, y)`` of every input ``x`` (N, C, H, W) (its ``missing``
    variables marginalized), class ``y`` and
    assignment ``z`` of every latent (the channel ``Z_{l,i}`` of every position of every level),
    by the explicit product of the latent tree (DESIGN section 2), in the log domain:

        log P(y) + log w_root[y, Z_L] + sum_{l, c} log w_{l,c}[Z_{l,parent(c)}, Z_{l-1,c}]
        + sum_i log P(x_i | Z_{0,i}).

    ``Z = prod_l K_l ** P_l``: tiny models only. The leaf term comes from the leaf layer
    (``level_log_probs(x, missing)[0]``); everything else from the weights, never from the sum
    layers. Each row of the result holds ``Z`` assignments in the order of ``itertools.product``
    over the latents of level 0, 1, ..., L (positions row-major).
    """
    sizes = [(k, h * w) for k, (h, w) in zip(model.channels, model.grids)]
    choices = [range(k) for k, p in sizes for _ in range(p)]
    z = torch.tensor(list(itertools.product(*choices)), dtype=torch.long).view(-1, len(choices))
    per_level = list(torch.split(z, [p for _, p in sizes], dim=1))  # [(Z, P_l)]
    n_z = z.shape[0]
    log_tree = torch.zeros(n_z, dtype=torch.float64)
    for level in range(1, model.num_levels + 1):
        h, w = model.grids[level]
        parent = model.pools[level - 1].expand(per_level[level].view(n_z, h, w)).reshape(n_z, -1)  # (Z, P_{l-1})
        layer = model.sums[level - 1]
        log_w = layer.log_weights().double().expand(layer.num_positions, -1, -1)  # (P, K_l, K_{l-1})
        log_tree += log_w[torch.arange(layer.num_positions), parent, per_level[level - 1]].sum(1)
    root = model.root.log_weights().double()[0][:, per_level[-1][:, 0]]  # (classes, Z)
    prior = model.log_class_prior().double().unsqueeze(1)  # (classes, 1)
    leaf = model.level_log_probs(x, missing)[0].double().flatten(2)  # (N, M, P_0)
    p0 = leaf.shape[2]
    leaf_term = leaf[:, per_level[0], torch.arange(p0)].sum(-1)  # (N, Z)
    return (prior + root + log_tree).unsqueeze(0) + leaf_term.unsqueeze(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (the CLI's
    ``threads`` option sets it for the whole process)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
