"""The log-space sum layer and product pooling."""
from __future__ import annotations

import math

import pytest
import torch

from convac import Categorical, Gaussian, HTConvAC, layers
from convac.layers import ProductPool, SumLayer, log_einsum_exp, log_sum_exact, min_log_weight


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
    assert torch.equal(pool.parents, children.flatten())  # the same map in the position-major layout


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


@pytest.mark.parametrize("make,message", [
    (lambda: SumLayer((2, 0), 3, 2, False), r"grid must be an int or an \(h, w\) pair of positive integers, got \(2, 0\)"),
    (lambda: SumLayer((2, 2), 0, 2, False), r"in_channels must be a positive integer, got 0"),
    (lambda: SumLayer((2, 2), 3, 2.0, False), r"out_channels must be a positive integer, got 2.0"),
    (lambda: SumLayer((2, 2), 3, 2, None), r"shared must be True or False, got None"),
    (lambda: ProductPool((4, 4), (2, -2)), r"window must be .* got \(2, -2\)"),
    (lambda: ProductPool((4,), 2), r"in_grid must be .* got \(4,\)"),
])
def test_invalid_layer_arguments_raise_one_line_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------ tiny weights
def test_fast_path_threshold_is_exact_for_any_inputs():
    """Weights at :func:`min_log_weight` on the largest input, the other inputs far below: the
    shifted matmul keeps float32 precision and finite gradients; 30 nats lower it would not,
    and the layer takes the exact path there."""
    k_in = 4
    for dtype in (torch.float32, torch.float64):
        lowest = min_log_weight(dtype, k_in)
        for log_w0 in (lowest + 0.5, lowest - 30):
            logits = torch.tensor([[log_w0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # (1, K_in)
            logits[0, 0] = log_w0 + torch.logsumexp(logits[0, 1:], 0)  # so that log w[0] ~ log_w0
            log_w = torch.log_softmax(logits, -1)
            x = torch.tensor([[[0.0, -3e3, -2e3, -1e3]]], dtype=torch.float64)  # the tiny weight's input is the max
            reference = torch.logsumexp(log_w.unsqueeze(0) + x, -1)
            layer = SumLayer((1, 1), k_in, 1, shared=True).to(dtype)
            with torch.no_grad():
                layer.logits.copy_(logits.to(dtype))
            x_in = x.to(dtype).requires_grad_()
            y = layer(x_in)
            y.sum().backward()
            fast = layer.exact_positions() is None
            assert fast == (log_w0 > lowest)
            assert torch.allclose(y.double(), reference, rtol=4 * torch.finfo(dtype).eps, atol=0)
            assert torch.isfinite(x_in.grad).all() and torch.isfinite(layer.logits.grad).all()
            if fast:  # the plain shifted matmul, without the layer's check, is exact here too
                assert torch.allclose(log_einsum_exp(x.to(dtype), log_w.exp().to(dtype).unsqueeze(0)).double(), reference,
                                      rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_exact_positions_match_the_float64_reference_with_gradients(shared):
    """A per-position layer with tiny weights at some positions only (each part on its own
    path) and a shared one: values and gradients of float32 equal the float64 log-domain
    reference; ``log_sum_exact``'s backward passes gradcheck."""
    torch.manual_seed(0)
    layer = SumLayer((2, 3), in_channels=5, out_channels=4, shared=shared)
    with torch.no_grad():
        layer.logits.mul_(3)
        layer.logits.view(-1, 4, 5)[-1, 1, 2] = -1e4  # the last weight position gets a weight e^-1e4
    plan = layer.exact_positions()
    assert plan is not None and plan[1].tolist() == [0 if shared else 5]
    x = (torch.randn(6, 7, 5) * 50).requires_grad_()
    with torch.no_grad():
        x[:, :, 2] = x.detach().amax(-1) + 200  # the input paired with the tiny weight dominates
    y = layer(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x64 = x.detach().double().requires_grad_()
    logits64 = layer.logits.detach().double().requires_grad_()
    reference = naive_log_sum_log(x64, torch.log_softmax(logits64, -1).reshape(-1, 4, 5))
    (reference * g.double()).sum().backward()
    assert torch.allclose(y.double(), reference, rtol=1e-6, atol=1e-4)
    assert torch.allclose(x.grad.double(), x64.grad, atol=1e-5)
    assert torch.allclose(layer.logits.grad.double(), logits64.grad, atol=1e-4)
    x_small = (torch.randn(2, 3, 5, dtype=torch.float64) * 10).requires_grad_()
    log_w = torch.log_softmax(torch.randn(1 if shared else 2, 4, 5, dtype=torch.float64) * 30, -1).requires_grad_()
    assert torch.autograd.gradcheck(log_sum_exact, (x_small, log_w))


@pytest.mark.parametrize("chunk", [1, 7, 50])
@pytest.mark.parametrize("positions", [1, 3])
def test_exact_paths_in_blocks_equal_the_whole_broadcast(monkeypatch, chunk, positions):
    """Blocks over positions and batch rows (down to one element of budget): values of the exact
    sum and the max node, and the exact sum's gradients (gradcheck), as with one block."""
    monkeypatch.setattr(layers, "BROADCAST_CHUNK", chunk)
    x = (torch.randn(3, 5, 4, dtype=torch.float64) * 10).requires_grad_()
    log_w = torch.log_softmax(torch.randn(positions, 2, 4, dtype=torch.float64) * 30, -1).requires_grad_()
    broadcast = log_w.unsqueeze(1) + x.unsqueeze(2)  # (P, B, K_out, K_in)
    assert torch.allclose(log_sum_exact(x, log_w), torch.logsumexp(broadcast, -1))
    assert torch.equal(layers.log_max_product(x, log_w), broadcast.amax(-1))
    assert torch.autograd.gradcheck(log_sum_exact, (x, log_w))


@pytest.mark.parametrize("budget", [1, 40, 1 << 18])
@pytest.mark.parametrize("shared", [False, True])
def test_the_fast_path_in_blocks_equals_one_block(monkeypatch, budget, shared):
    """The CPU's blocks over positions (down to one position each): the values and both
    gradients of log_einsum_exp equal those of one block, with and without autograd."""
    x = torch.randn(6, 5, 4, dtype=torch.float64) * 10
    x[2, 1] = -math.inf  # a row of -inf: shift 0, values -inf (gradients NaN, of log 0) in every block
    weights = torch.softmax(torch.randn(1 if shared else 6, 3, 4, dtype=torch.float64), -1)
    grad = torch.randn(6, 5, 3, dtype=torch.float64)

    def run():
        x_, w_ = x.clone().requires_grad_(), weights.clone().requires_grad_()
        y = log_einsum_exp(x_, w_)
        y.backward(grad)
        with torch.no_grad():
            return y.detach(), log_einsum_exp(x, weights), x_.grad, w_.grad

    whole = run()
    monkeypatch.setattr(layers, "CPU_BLOCK_VALUES", budget)
    steps = {s.stop - s.start for s in layers._position_blocks(x, 3)[:-1]}
    assert steps <= {max(1, budget // 20)} and len(layers._position_blocks(x, 3)) == -(-6 // max(1, budget // 20))
    for blocked, one in zip(run(), whole):
        torch.testing.assert_close(blocked, one, rtol=1e-14, atol=0, equal_nan=True)
    assert torch.equal(whole[0][2, 1], torch.full((3,), -math.inf, dtype=torch.float64))
    # a GPU's (any non-CPU device's) sum node is one block
    assert layers._position_blocks(torch.empty(6, 5, 4, device="meta"), 3) == [slice(0, 6)]


def naive_log_sum_log(x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Reference with log-weights: logsumexp_a(log w[p, j, a] + x[p, b, a]) over the broadcast."""
    return torch.logsumexp(log_weights.unsqueeze(1) + x.unsqueeze(2), dim=-1)


def test_exact_positions_follow_the_weights_and_are_cached(monkeypatch):
    """The plan is recomputed when the logits change in place (an optimizer step, a copy) or
    change dtype, and reused (no new check) while they do not."""
    checks = []
    threshold = layers.min_log_weight
    monkeypatch.setattr(layers, "min_log_weight", lambda *args: checks.append(args) or threshold(*args))
    layer = SumLayer((1, 2), 3, 2, shared=False)
    assert layer.exact_positions() is None and layer.exact_positions() is None
    assert len(checks) == 1  # cached: the weights did not change
    with torch.no_grad():
        layer.logits[0, 1, 0, 0] = -1e4  # position 1
    plan = layer.exact_positions()
    assert plan[1].tolist() == [1] and layer.exact_positions() is plan and len(checks) == 2
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.randn(2, 3, 3)).sum().backward()
    with torch.no_grad():
        layer.logits.grad.zero_()
        layer.logits.grad[0, 1, 0, 0] = -1e4  # one step moves the weight back up
    optimizer.step()
    assert layer.exact_positions() is None and len(checks) == 3
    layer.double()
    with torch.no_grad():
        layer.logits.fill_(0)
        layer.logits[0, 0, 1, 2] = -800.0  # position 0; float64: below its threshold (about -671)
    assert layer.exact_positions()[1].tolist() == [0] and checks[-1][0] == torch.float64


def test_exact_positions_come_from_a_conservative_bound():
    """A position takes the exact path when ``min - max - log K_in`` of a row of its logits is
    below :func:`min_log_weight`: every position with a smaller log-weight does (exactness), and
    none whose log-weights are all more than ``log K_in`` above it (speed)."""
    torch.manual_seed(0)
    layer = SumLayer((4, 5), in_channels=6, out_channels=3, shared=False)
    with torch.no_grad():
        layer.logits.copy_(torch.randn_like(layer.logits) * torch.logspace(0, 2.5, 20).view(4, 5, 1, 1))
    lowest = torch.log_softmax(layer.logits, -1).reshape(20, -1).amin(1)
    threshold = min_log_weight(torch.float32, 6)
    plan = layer.exact_positions()
    exact = set(plan[1].tolist()) if plan is not None else set()
    assert {p for p in range(20) if lowest[p] < threshold} <= exact
    assert exact <= {p for p in range(20) if lowest[p] < threshold + math.log(6)}
    assert 0 < len(exact) < 20


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-foreach": lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
    "sgd-fused": lambda p: torch.optim.SGD(p, lr=0.1, fused=True),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=0.1, fused=True),  # convac-train's default
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_a_model_reads_the_exact_positions_of_all_sum_layers_at_once(monkeypatch, make_optimizer):
    """After an optimizer step every sum layer's plan is stale, whichever implementation took
    the step (PyTorch's fused kernels do not advance the version counters themselves:
    ``convac.layers`` does it for them); the model's next forward remakes all plans with one host
    read (one ``refresh_exact_positions`` over every layer, before the upward pass), and a
    forward without a step in between reads nothing."""
    import convac.model

    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), Categorical(3), 2, 2)
    refresh, stale_counts, flags = convac.model.refresh_exact_positions, [], []

    def counting_refresh(layers):
        layers = list(layers)
        stale_counts.append(sum(not layer._plan_is_current() for layer in layers))
        refresh(layers)

    monkeypatch.setattr(convac.model, "refresh_exact_positions", counting_refresh)
    small_positions = SumLayer._small_positions
    monkeypatch.setattr(SumLayer, "_small_positions", lambda layer: flags.append(layer) or small_positions(layer))
    optimizer = make_optimizer(model.parameters())
    x = torch.randint(0, 3, (5, 1, 4, 4))
    for _ in range(2):
        optimizer.zero_grad()
        (-model.log_prob(x).mean()).backward()
        optimizer.step()
    assert stale_counts == [model.num_levels + 1] * 2 and len(flags) == 2 * (model.num_levels + 1)
    model.log_prob(x)
    model.log_prob(x)
    assert stale_counts[-2:] == [model.num_levels + 1, 0] and len(flags) == 3 * (model.num_levels + 1)


def test_fixed_weights_normalize_once_and_end_with_the_block():
    layer = SumLayer((2, 2), 3, 4, shared=False)
    with torch.no_grad(), layer.fixed_weights():
        first, log_first = layer.weights(), layer.log_weights()
        assert layer.weights() is first and layer.log_weights() is log_first  # normalized once
        torch.testing.assert_close(first.log(), log_first)
    with torch.no_grad():
        layer.logits.add_(torch.randn_like(layer.logits))
    torch.testing.assert_close(layer.weights(), torch.softmax(layer.logits, -1).view(4, 4, 3))  # fresh after the block
    model = HTConvAC((1, 4, 4), Categorical(3), 2, 3)
    with torch.no_grad(), model.fixed_weights():
        assert all(s.weights() is s.weights() for s in [*model.sums, model.root])
    assert all(s._normalized is None for s in [*model.sums, model.root])
