"""Mixed precision: under autocast the sum nodes compute in float32 (their gradients agree with
float64), a model's likelihood and gradients are those of float32, ``bf16-mixed`` trains the
digits default to the test NLL of float32, a 16-mixed step with loss scaling is the float32
step, and half-precision parameters are refused."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from convac import Bernoulli, Categorical, HTConvAC
from convac.cli.train import train
from convac.layers import log_einsum_exp, log_max_product, log_sum_exact
from convac.training.module import check_precision

AUTOCAST = [torch.bfloat16, torch.float16]


def sum_inputs(shared: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, generator=g, dtype=torch.float64) * 3
    log_w = torch.log_softmax(torch.randn(1 if shared else 3, 4, 6, generator=g, dtype=torch.float64) * 2, -1)
    return x.to(dtype), log_w.to(dtype)


@pytest.mark.parametrize("low", AUTOCAST, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-position", "shared"])
@pytest.mark.parametrize("node", ["log_einsum_exp", "log_sum_exact"])
def test_sum_node_gradients_under_autocast_equal_float64(node, shared, low):
    x64, log_w64 = sum_inputs(shared, torch.float64)
    results = {}
    for dtype, autocast in ((torch.float64, False), (torch.float32, True)):
        x = x64.to(dtype).clone().requires_grad_()
        log_w = log_w64.to(dtype).clone().requires_grad_()
        g = torch.linspace(-1, 1, 3 * 5 * 4, dtype=dtype).view(3, 5, 4)
        with torch.autocast("cpu", dtype=low, enabled=autocast):
            y = log_einsum_exp(x, log_w.exp()) if node == "log_einsum_exp" else log_sum_exact(x, log_w)
            assert y.dtype == dtype
            (y * g).sum().backward()
        results[dtype] = (y.detach(), x.grad, log_w.grad)
    for a, b in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_max_node_under_autocast_is_float32():
    x, log_w = sum_inputs(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = log_max_product(x, log_w)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, log_max_product(x, log_w))


@pytest.mark.parametrize("leaf", [Categorical(5), Bernoulli()], ids=["categorical", "bernoulli"])
def test_a_model_under_autocast_gives_the_float32_likelihood_and_gradients(leaf):
    """Every query of the likelihood (the folded leaves included: 64 rows > 5 values) and its
    gradient are float32 under bf16 autocast, equal to those without autocast."""
    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), leaf, num_components=4, channels=[6, 5], num_classes=3)
    x = torch.randint(0, leaf.num_values, (64, 1, 4, 4))
    missing = torch.rand(x.shape) < 0.2
    out = {}
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            log_p = model.log_prob(x, missing)
            levels = model.level_log_probs(x)
            assert log_p.dtype == torch.float32 and all(v.dtype == torch.float32 for v in levels)
            log_p.sum().backward()
        out[autocast] = [log_p.detach(), *(v.detach() for v in levels), *(p.grad.clone() for p in model.parameters())]
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b)


def test_a_16_mixed_step_with_loss_scaling_equals_the_float32_step():
    """``16-mixed`` as Lightning runs it on a GPU: float16 autocast and a ``GradScaler`` that
    multiplies the loss by 2^16 before the backward pass and divides the gradients before the
    optimizer step. On the CPU with the same two pieces, nothing of the model runs in float16
    (the sum nodes and the custom backward passes stay float32) and scaling by a power of two
    is exact, so the steps are taken and the parameters equal the float32 steps' bit for bit."""
    def trained(scaled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = HTConvAC((1, 4, 4), Categorical(5), num_components=4, channels=[6, 5], num_classes=1)
        x = torch.randint(0, 5, (64, 1, 4, 4), generator=torch.Generator().manual_seed(1))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=scaled)
        for _ in range(3):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaled):
                loss = -model.log_prob(x).mean()
            assert loss.dtype == torch.float32
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scaled:
            assert scaler.get_scale() == 2.0 ** 16  # no step was skipped for an inf or NaN gradient
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(trained(True), trained(False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision, use_em, works", [
    ("32-true", True, True), ("64-true", False, True), ("bf16-mixed", True, True), ("16-mixed", False, True),
    ("16-mixed", True, False), ("bf16-true", False, False), ("16-true", True, False),
])
def test_precisions_that_cannot_train_are_refused_naming_one_that_can(precision, use_em, works):
    if works:
        check_precision(precision, use_em)
    else:
        with pytest.raises(ValueError, match="use trainer.precision=bf16-mixed"):
            check_precision(precision, use_em)


def digits_default(tmp_path, precision: str, optimizer: str) -> dict[str, float]:
    """``convac-train`` on the bundled default (model=ht data=digits), 3 epochs, without the
    probe and the pictures."""
    overrides = [f"output_dir={tmp_path / precision}", f"trainer.precision={precision}", "trainer.max_epochs=3",
                 f"module.optimizer={optimizer}",
                 "trainer.enable_progress_bar=false", "~callbacks.entropy_probe", "~callbacks.pictures",
                 "~callbacks.model_summary", "threads=1"]
    with initialize_config_module("convac.configs", version_base="1.3"):
        return train(compose("train", overrides=overrides))


@pytest.mark.parametrize("optimizer", ["Adam", "em"])
def test_bf16_mixed_trains_the_digits_default_to_the_float32_nll(tmp_path, optimizer):
    full = digits_default(tmp_path, "32-true", optimizer)
    mixed = digits_default(tmp_path, "bf16-mixed", optimizer)
    for metrics in (full, mixed):
        assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.endswith(("loss", "nll")))
    assert abs(mixed["test/nll"] - full["test/nll"]) <= 0.005 * full["test/nll"], (mixed["test/nll"], full["test/nll"])


def test_half_precision_parameters_stop_before_the_run_folder_is_written(tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", "trainer.precision=bf16-true"]
    with initialize_config_module("convac.configs", version_base="1.3"):
        with pytest.raises(ValueError, match="bf16-true .* use trainer.precision=bf16-mixed"):
            train(compose("train", overrides=overrides))
    assert not (tmp_path / "run").exists()
