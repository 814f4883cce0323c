"""The sum node's elementwise kernels (convac.kernels): every candidate computes its operation
(the maxima bit for bit, exp and log to float32 rounding), the fastest is chosen once per
device, dtype and channel count, a candidate must beat PyTorch's operation by the margin, and
pinned kernels override the measurement."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from convac import HTConvAC, kernels


@pytest.fixture(autouse=True)
def fresh_choices():
    kernels.forget()
    yield
    kernels.pin(**{name: None for name in kernels.OPERATIONS})
    kernels.forget()


@pytest.mark.parametrize("k", [1, 2, 3, 8, 16, 17, 24, 31, 32, 48, 64])
def test_every_maximum_kernel_is_the_maximum_bit_for_bit(k):
    x = torch.randn(3, 5, k) * 100
    x[0, 0] = -math.inf
    x[1, 1, k // 2] = math.nan
    expected = x.amax(-1, keepdim=True)
    for candidate in kernels.OPERATIONS["shift"].candidates.values():
        out = candidate.run(x)
        assert out.shape == expected.shape
        assert torch.equal(out, expected) or torch.allclose(out, expected, equal_nan=True)
        assert out.data_ptr() != x.data_ptr()  # a new tensor: the caller fills its NaN in place


@pytest.mark.parametrize("k", [1, 2, 16, 17, 32, 64])
def test_every_spread_kernel_is_max_minus_min_bit_for_bit(k):
    x = torch.randn(3, 5, k) * 100
    x[0, 0, 0] = -math.inf
    x[1, 1, k // 2] = math.nan
    expected = x.amax(-1) - x.amin(-1)
    for candidate in kernels.OPERATIONS["spread"].candidates.values():
        out = candidate.run(x)
        assert out.shape == (3, 5) and torch.allclose(out, expected, rtol=0, atol=0, equal_nan=True)
    assert out[1, 1].isnan() and (out[0, 0] == math.inf if k > 1 else out[0, 0].isnan())  # -inf alone: -inf - (-inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_exp_and_log_kernel_agrees_with_torch(dtype):
    g = torch.Generator().manual_seed(0)
    d = -torch.rand(1000, generator=g, dtype=torch.float64).mul(80).to(dtype)
    d[0] = -math.inf
    eps = torch.finfo(dtype).eps
    exact = torch.exp(d.double())
    for candidate in kernels.OPERATIONS["exp"].candidates.values():
        out = candidate.run(d.clone()).double()
        assert out[0] == 0.0  # exp(-inf)
        # exp2(d log2 e): the roundings of log2 e and the product cost |d| eps relative (kernels.exp_by_exp2)
        bound = (d[1:].double().abs() + 2) * eps * exact[1:]
        assert ((out[1:] - exact[1:]).abs() <= bound).all(), candidate.name
    mixed = torch.rand(200, 16, generator=g, dtype=torch.float64).to(dtype)
    mixed[0, 0] = 0.0
    shift = torch.randn(200, 1, generator=g, dtype=torch.float64).to(dtype)
    expected = torch.log(mixed) + shift
    for candidate in kernels.OPERATIONS["log_add"].candidates.values():
        for in_place in (False, True):
            source = mixed.clone()
            out = source if in_place else torch.empty_like(mixed)
            assert candidate.run(source, shift, out) is out
            torch.testing.assert_close(out, expected, rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
            if not in_place:
                assert torch.equal(source, mixed)  # the input is left as it was


def fake_timings(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Replace the timer: each candidate takes ``seconds[name]``; returns the names timed."""
    timed = []

    def timer(candidate, arguments, device):
        timed.append(candidate.name)
        return seconds[candidate.name]

    monkeypatch.setattr(kernels, "_seconds", timer)
    return timed


def test_the_choice_is_measured_once_per_device_dtype_and_channels(monkeypatch, caplog):
    timed = fake_timings(monkeypatch, {"amax": 2.0, "halving": 1.0})
    with caplog.at_level(logging.INFO, logger="convac.kernels"):
        for _ in range(3):
            kernels.channel_max(torch.randn(4, 16))
        kernels.channel_max(torch.randn(4, 64))
        torch.set_num_threads(torch.get_num_threads())  # the thread count is not part of the choice
        kernels.channel_max(torch.randn(4, 16, dtype=torch.float64))
    assert timed == ["amax", "halving"] * 3
    small = kernels.SIZE_CLASSES[0]
    assert kernels.chosen()["shift"] == {("cpu", torch.float32, 16, small): "halving",
                                         ("cpu", torch.float32, 64, small): "halving",
                                         ("cpu", torch.float64, 16, small): "halving"}
    assert sum("sum-node kernel shift" in r.message for r in caplog.records) == 3  # logged once per choice


@pytest.mark.parametrize("numpy_seconds, expected", [(0.5, "numpy"), (0.9, "torch"), (2.0, "torch")])
def test_a_candidate_replaces_torch_only_when_clearly_faster(monkeypatch, numpy_seconds, expected):
    """On a CPU where NumPy's log2 is AVX-512 code it wins; where it is slower (AVX2) or about as
    fast (within the margin), PyTorch's log stays."""
    fake_timings(monkeypatch, {"torch": 1.0, "numpy": numpy_seconds})
    mixed = torch.rand(8, 4)
    kernels.log_add(mixed, torch.zeros(8, 1), mixed)
    assert kernels.chosen()["log_add"] == {("cpu", torch.float32, None, kernels.SIZE_CLASSES[0]): expected}


def test_each_size_class_is_timed_on_its_own_size_and_keeps_its_own_choice(monkeypatch):
    """Per-call costs decide on small tensors, the loops on large ones: a kernel of several
    operations (halving) can lose on a small tensor and win on a large one."""
    sizes = []

    def timer(candidate, arguments, device):
        sizes.append(arguments[0].numel())
        small = arguments[0].numel() < 4 ** 9
        return {"amax": 1.0, "halving": 2.0 if small else 0.5}[candidate.name]

    monkeypatch.setattr(kernels, "_seconds", timer)
    for rows in (1, 100, 2_000, 70_000, 300_000, 10**6):
        kernels.channel_max(torch.zeros(rows, 16))
    assert [kernels.size_class(torch.empty(n)) for n in (0, 4095, 4 ** 7, 4 ** 8 - 1, 4 ** 11, 4 ** 12)] == [6, 6, 7, 7, 11, 11]
    assert kernels.chosen()["shift"] == {("cpu", torch.float32, 16, 6): "amax", ("cpu", torch.float32, 16, 7): "amax",
                                         ("cpu", torch.float32, 16, 10): "halving",
                                         ("cpu", torch.float32, 16, 11): "halving"}
    # each class timed once per candidate, on 4^class values (rows of K = 16)
    assert sizes == [4 ** c for c in (6, 7, 10, 11) for _ in range(2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_add_is_timed_in_place_as_the_sum_node_runs_it(monkeypatch, dtype):
    """The timing input passes ``mixed`` as its own ``out``: moved to the dtype and copied for
    each round, the two stay one tensor, so every candidate is timed in place."""
    seen = []

    def run(mixed, shift, out):
        seen.append(mixed is out)
        return kernels.log_add_torch(mixed, shift, out)

    monkeypatch.setitem(kernels.OPERATIONS["log_add"].candidates, "torch", kernels.Candidate("torch", run))
    monkeypatch.setattr(kernels.OPERATIONS["log_add"], "reference", kernels.OPERATIONS["log_add"].candidates["torch"])
    mixed = torch.rand(8, 4, dtype=dtype)
    kernels.log_add(mixed, torch.zeros(8, 1, dtype=dtype), mixed)
    assert len(seen) == kernels.TIMING_ROUNDS + 2 and all(seen)  # the timed rounds, then the call itself


def test_numpy_log_needs_contiguous_input_and_output(monkeypatch):
    kernels.pin(log_add="numpy")
    mixed = torch.rand(8, 4)
    out = torch.empty(4, 8).t()  # (8, 4), not contiguous: the NumPy kernel does not apply
    assert kernels.log_add(mixed, torch.zeros(8, 1), out) is out
    torch.testing.assert_close(out, mixed.log())


def test_a_kernel_that_cannot_run_on_the_arguments_falls_back_to_torch(monkeypatch):
    fake_timings(monkeypatch, {"torch": 1.0, "numpy": 0.1})
    mixed = torch.rand(4, 8).t()  # not contiguous: NumPy's kernel does not apply
    torch.testing.assert_close(kernels.log_add(mixed, torch.zeros(8, 1), torch.empty(8, 4)), mixed.log())


def test_pinned_kernels_give_the_same_model_output_and_bad_names_are_refused(monkeypatch):
    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), "bernoulli", 3, 5)
    x = torch.randint(0, 2, (30, 1, 4, 4))
    outputs = []
    for log_add, exp, shift in (("torch", "exp", "amax"), ("numpy", "exp2", "halving")):
        kernels.pin(log_add=log_add, exp=exp, shift=shift)
        outputs.append(model.log_prob(x))
    torch.testing.assert_close(outputs[0], outputs[1])
    assert kernels.chosen()["exp"] == {("pinned",): "exp2"}
    with pytest.raises(ValueError, match="unknown kernel 'fast' for log_add; expected one of"):
        kernels.pin(log_add="fast")
    with pytest.raises(ValueError, match="unknown sum-node operation"):
        kernels.pin(softmax="torch")


def test_kernel_keys_read_as_text():
    """The log lines and the bench's JSON name a choice by :func:`kernels.describe`."""
    assert kernels.describe(("cpu", torch.float32, 16, 9)) == "cpu float32 K=16 4^9"
    assert kernels.describe(("cuda", torch.bfloat16, None, 11)) == "cuda bfloat16 4^11"
    assert kernels.describe(("pinned",)) == "pinned"
