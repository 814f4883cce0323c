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


def shuffle_order(model, seed: int = 0):
    """Give a learned-structure model a random order per repetition (the exact tests must hold
    for any tree, not only the raster order a fresh model starts with); other models unchanged."""
    if getattr(model, "structure", "grid") == "learned":
        generator = torch.Generator().manual_seed(seed)
        r, p = model.order.shape
        model.set_order(torch.stack([torch.randperm(p, generator=generator) for _ in range(r)]))
    return model


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (the CLI's
    ``threads`` option sets it for the whole process)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
