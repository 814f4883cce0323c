"""On a CUDA device (skipped without one): a training step reads back from the device only the
exact-position plan, once per step; queries read back nothing; the CUDA results equal the CPU's."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from convac import Categorical, HTConvAC
from convac.entropy import probe
from convac.layers import SumLayer, refresh_exact_positions

pytestmark = pytest.mark.gpu


def cuda_model(size: int = 8, channels: int = 8, num_values: int = 17) -> HTConvAC:
    torch.manual_seed(0)
    model = HTConvAC((1, size, size), Categorical(num_values), channels, channels).cuda()
    model.validate_args = False  # as convac-train runs it on data its datamodule checked
    return model


def host_syncs(fn) -> int:
    """How many times ``fn()`` synchronized the host with the device (``set_sync_debug_mode``
    warns once per synchronizing call)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_a_training_step_synchronizes_once_for_the_exact_positions():
    """Forward, backward and a fused Adam step: one host read per step, the plan of every sum
    layer (their weights changed); with the plan made first, the rest runs under
    ``set_sync_debug_mode("error")``."""
    model = cuda_model()
    x = torch.randint(0, 17, (64, 1, 8, 8), device="cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)

    def step():
        optimizer.zero_grad()
        (-model.log_prob(x).mean()).backward()
        optimizer.step()

    for _ in range(2):
        step()
    assert host_syncs(step) == 1
    refresh_exact_positions([*model.sums, model.root])  # the one read, before the step
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimizer.zero_grad()
        (-model.log_prob(x).mean()).backward()
        optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_queries_with_unchanged_weights_do_not_synchronize():
    model = cuda_model()
    x = torch.randint(0, 17, (32, 1, 8, 8), device="cuda")
    model.log_prob(x)  # the plan of these weights
    assert host_syncs(lambda: model.log_prob(x)) == 0
    model.validate_args = True  # the value checks read values back
    assert host_syncs(lambda: model.log_prob(x)) > 0


def test_exact_and_fast_paths_on_cuda_equal_float64_cpu():
    torch.manual_seed(0)
    layer = SumLayer((2, 3), in_channels=5, out_channels=4, shared=False)
    with torch.no_grad():
        layer.logits.mul_(3)
        layer.logits.view(-1, 4, 5)[-1, 1, 2] = -1e4  # one position on the exact path
    x = torch.randn(6, 7, 5) * 50
    reference = SumLayer((2, 3), 5, 4, shared=False).double()
    reference.load_state_dict(layer.state_dict())
    expected = reference(x.double())
    gpu = layer.cuda()
    assert gpu.exact_positions()[1].tolist() == [5]
    assert torch.allclose(gpu(x.cuda()).double().cpu(), expected, rtol=1e-6, atol=1e-4)


def test_cuda_samples_stay_in_the_support_and_the_probe_agrees_with_cpu():
    model = cuda_model(num_values=5)
    with torch.no_grad():
        model.leaves.logits[..., 3, :] = -1e4  # value 3 has probability ~0 everywhere
    samples = model.sample(512, generator=torch.Generator(device="cuda").manual_seed(0))
    assert samples.is_cuda and not (samples == 3).any()
    on_cuda, on_cpu = probe(model, num_samples=512, seed=0), probe(model.cpu(), num_samples=512, seed=0)
    assert abs(on_cuda.h_x.value - on_cpu.h_x.value) <= 4 * math.hypot(on_cuda.h_x.se, on_cpu.h_x.se)
