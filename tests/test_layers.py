"""The log-space sum layer and product pooling."""
from __future__ import annotations

import math

import pytest
import torch

from convac import Categorical, Gaussian, HTConvAC
from convac.layers import ProductPool, SumLayer, log_einsum_exp


def naive_log_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reference: logsumexp_a(log w[p, j, a] + x[p, b, a]) over the broadcast (P, B, K_out, K_in) tensor."""
    return torch.logsumexp(weights.log().unsqueeze(1) + x.unsqueeze(2), dim=-1)


@pytest.mark.parametrize("shared", [False, True])
def test_sum_layer_equals_naive_logsumexp(shared):
    layer = SumLayer((3, 2), in_channels=5, out_channels=4, shared=shared).double()
    x = torch.randn(6, 7, 5, dtype=torch.float64) * 30
    weights = layer.position_weights()
    assert torch.allclose(weights.sum(-1), torch.ones(6, 4, dtype=torch.float64))
    assert torch.allclose(layer(x), naive_log_sum(x, weights), atol=1e-5)


def test_sum_layer_is_finite_for_very_negative_and_infinite_inputs():
    layer = SumLayer((1, 2), in_channels=3, out_channels=2, shared=False)
    x = torch.tensor([[[-1e4, -1e4 - 3, -1e4 - 50]], [[-math.inf, -2e4, -math.inf]]], requires_grad=True)
    y = layer(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, naive_log_sum(x.detach(), layer.position_weights()), atol=1e-3)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.logits.grad).all()
    everything_impossible = torch.full((2, 1, 3), -math.inf)
    assert (layer(everything_impossible) == -math.inf).all()


def test_log_einsum_exp_shared_and_per_position_agree():
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(1, 5, 6, dtype=torch.float64), -1)
    assert torch.allclose(log_einsum_exp(x, w), log_einsum_exp(x, w.expand(4, -1, -1).contiguous()))


def test_product_pool_sums_windows_and_pads_with_zero():
    pool = ProductPool((3, 5), (2, 2))
    assert pool.out_grid == (2, 3)
    x = torch.arange(15, dtype=torch.float64).view(15, 1, 1)
    out = pool(x).view(2, 3)
    grid = torch.arange(15, dtype=torch.float64).view(3, 5)
    expected = torch.tensor([[grid[0:2, 0:2].sum(), grid[0:2, 2:4].sum(), grid[0:2, 4:].sum()],
                             [grid[2:, 0:2].sum(), grid[2:, 2:4].sum(), grid[2:, 4:].sum()]])
    assert torch.equal(out, expected)
    parents = torch.arange(6).view(1, 2, 3)
    children = pool.expand(parents)
    assert children.shape == (1, 3, 5) and children[0, 2, 4] == 5 and children[0, 1, 1] == 0


def test_deep_ht_gradients_are_finite_on_32x32():
    torch.manual_seed(0)
    model = HTConvAC((1, 32, 32), Categorical(16), 8, 8)
    assert model.num_levels == 5
    x = torch.randint(0, 16, (16, 1, 32, 32))
    loss = -model.log_prob(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    gaussian = HTConvAC((3, 32, 32), Gaussian(), 8, 8)
    loss = -gaussian.log_prob(torch.randn(4, 3, 32, 32) * 5).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in gaussian.parameters())


@pytest.mark.parametrize("positions", [1, 3])
def test_log_einsum_exp_custom_gradient_is_exact(positions):
    """The hand-written backward (shared and per-position weights) against finite differences,
    and the in-place no-grad path against the autograd path."""
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 10).requires_grad_()
    w = torch.softmax(torch.randn(positions, 2, 5, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(log_einsum_exp, (x, w))
    with torch.no_grad():
        assert torch.allclose(log_einsum_exp(x, w), naive_log_sum(x, w.expand(3, -1, -1)))


@pytest.mark.parametrize("positions", [3, 1])
def test_log_einsum_exp_gradients_match_finite_differences(positions):
    """The hand-written backward of the sum layer against numerical derivatives (float64)."""
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 3).requires_grad_()
    w = torch.softmax(torch.randn(positions, 2, 5, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(log_einsum_exp, (x, w))
    reference = naive_log_sum(x, w.expand(3, -1, -1))
    grads = torch.autograd.grad(reference.sum(), (x, w))
    ours = torch.autograd.grad(log_einsum_exp(x, w).sum(), (x, w))
    assert all(torch.allclose(a, b) for a, b in zip(ours, grads))
