"""Property-based fuzzing of the public queries: random structures, shapes, masks, extreme values.

The contract: a query either raises the documented ``ValueError`` or returns values without NaN;
``log_prob`` and ``log_posterior`` are finite whenever the observed values have a finite
log-likelihood in the model's dtype (always, for discrete leaves), and so are the gradients;
samples lie in the leaves' range; float32 agrees with float64 to float32 precision. Models
are drawn with ordinary or extreme parameters (weights and leaf parameters up to +-1e4).
"""
from __future__ import annotations

import copy
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convac import Bernoulli, Categorical, CPConvAC, Gaussian, HTConvAC
from tests.test_numerics import EPS32, extreme_parameters, path_magnitude

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def models(draw):
    c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    leaf = draw(st.sampled_from([Categorical(2), Categorical(4), Bernoulli(), Gaussian(), Gaussian(min_std=0.5)]))
    common = dict(
        in_shape=(c, h, w), leaf=leaf, num_components=draw(st.integers(1, 3)), patch_size=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(1, 3)), share_leaves=draw(st.booleans()), share_weights=draw(st.booleans()),
    )
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if draw(st.booleans()):
        model = CPConvAC(rank=draw(st.integers(1, 3)), **common)
    else:
        model = HTConvAC(channels=draw(st.integers(1, 3)), pool=draw(st.sampled_from([2, 3])), **common)
    scale = draw(st.sampled_from([None, 1e2, 1e4]))  # weights and leaf parameters up to +-scale
    if scale is not None:
        extreme_parameters(model, scale, seed)
    return model.double() if draw(st.booleans()) else model


@st.composite
def inputs(draw, model):
    b = draw(st.integers(1, 4))
    shape = (b, *model.in_shape)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if model.leaf_spec.is_discrete:
        x = torch.randint(0, model.leaves.num_values, shape, generator=g)
    else:
        scale = draw(st.sampled_from([1e-12, 1.0, 1e3, 1e12]))
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(model.class_logits.dtype)
        if draw(st.booleans()):
            x[torch.rand(shape, generator=g) < 0.3] = float("nan")
    missing = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    return x, missing


@FUZZ
@given(data=st.data())
def test_queries_never_return_nan(data):
    model = data.draw(models())
    x, missing = data.draw(inputs(model))
    log_p = model.log_prob(x, missing)
    assert log_p.shape == (x.shape[0],) and not torch.isnan(log_p).any()
    if model.leaf_spec.is_discrete:  # probabilities of discrete inputs, never 0 for finite parameters
        assert (log_p <= 1e-4).all() and torch.isfinite(log_p).all()
    if torch.isfinite(log_p).all():
        log_p.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if torch.isfinite(log_p).all():
        posterior = model.log_posterior(x, missing)
        assert torch.isfinite(posterior).all()
        assert torch.allclose(posterior.exp().sum(1), torch.ones(x.shape[0], dtype=posterior.dtype), atol=1e-4)
    levels = model.level_log_probs(x, missing)
    assert all(not torch.isnan(v).any() for v in levels)
    for mode in ("sample", "mpe"):
        filled = model.inpaint(x, missing, mode=mode, generator=torch.Generator().manual_seed(0))
        assert filled.shape == x.shape and not torch.isnan(filled).any() or not x.is_floating_point()
        kept = ~(missing | (torch.isnan(x) if x.is_floating_point() else torch.zeros_like(missing)))
        assert torch.equal(filled[kept], x[kept])
    samples = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (3, *model.in_shape) and torch.isfinite(model.log_prob(samples)).all()
    if model.leaf_spec.is_discrete:
        assert 0 <= int(samples.min()) and int(samples.max()) < model.leaves.num_values
    with torch.no_grad():
        assert all(math.isclose(float(m.sum(0).mean()), 1.0, rel_tol=1e-4) for m in model.latent_marginals())


@FUZZ
@given(data=st.data())
def test_bad_inputs_raise_value_error_only(data):
    model = data.draw(models())
    x, _ = data.draw(inputs(model))
    corruption = data.draw(st.sampled_from(["dims", "shape", "range", "mask", "inf"]))
    if corruption == "dims":
        bad, mask = x.flatten(1), None
    elif corruption == "shape":
        bad, mask = torch.cat([x, x], dim=-1), None
    elif corruption == "range":
        bad, mask = (x + 1000 if model.leaf_spec.is_discrete else x.long()), None
    elif corruption == "mask":
        bad, mask = x, torch.zeros(x.shape[:-1], dtype=torch.bool)
    else:
        bad = x.double() if model.leaf_spec.is_discrete else x.clone()
        bad.view(-1)[0] = math.inf
        mask = torch.zeros(x.shape, dtype=torch.bool)
    try:
        model.log_prob(bad, mask)
    except ValueError as err:
        assert "expected" in str(err) or "expect" in str(err) or "must" in str(err)
    else:
        raise AssertionError(f"{corruption} input was accepted")


@FUZZ
@given(data=st.data())
def test_float32_matches_float64(data):
    """``log_prob`` of the same model and inputs in float32 and float64: within a few float32
    ulps of the magnitudes involved (the log-values along a latent path, the leaf values)."""
    model = data.draw(models())
    x, missing = data.draw(inputs(model))
    m32, m64 = copy.deepcopy(model).float(), copy.deepcopy(model).double()
    x32 = x.float() if x.is_floating_point() else x
    x64 = x32.double() if x.is_floating_point() else x
    with torch.no_grad():
        log_p32, log_p64 = m32.log_prob(x32, missing), m64.log_prob(x64, missing)
        scale = max(float(p.abs().max()) for p in m64.parameters())
        magnitude = path_magnitude(m64, scale) + log_p64.abs()
        if not model.leaf_spec.is_discrete:
            magnitude = magnitude + m64.level_log_probs(x64, missing)[0].abs().amax((1, 2, 3))
    finite = torch.isfinite(log_p64)
    assert torch.equal(torch.isfinite(log_p32), finite) and (finite.all() or not model.leaf_spec.is_discrete)
    assert ((log_p32.double() - log_p64).abs()[finite] <= 8 * EPS32 * magnitude[finite]).all()
