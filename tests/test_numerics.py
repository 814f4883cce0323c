"""Numerics at the edges: extreme weights and leaf parameters (up to ±1e4), float32 against the
exact float64 enumeration of every latent, samples always in their support."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from convac import Bernoulli, Categorical, CPConvAC, Gaussian, HTConvAC
from convac.entropy import probe
from convac.leaves import sample_from_cdf
from tests.conftest import all_inputs, latent_log_joint
from tests.test_model import chi_square_pvalue

EPS32 = torch.finfo(torch.float32).eps
LOG_TINY64 = math.log(torch.finfo(torch.float64).tiny) - 40  # below this a float64 probability is 0


def extreme_parameters(model, scale: float, seed: int):
    """Every floating parameter: with probability 0.3 uniform in ``[-scale, scale]``, else
    ``N(0, 3^2)``; drawn in float32 (so the float64 copy holds the same values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            wild = (torch.rand(p.shape, generator=g) * 2 - 1) * scale
            tame = torch.randn(p.shape, generator=g) * 3
            p.copy_(torch.where(torch.rand(p.shape, generator=g) < 0.3, wild, tame))
    return model


# tiny models whose latents can be enumerated (every leaf family, per class, shared, padded patches)
EDGE = [
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, channels=3)),
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Bernoulli(), num_components=2, channels=2, num_classes=2, class_prior="learned")),
    (CPConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, rank=3, num_classes=2, share_weights=True)),
    (HTConvAC, dict(in_shape=(2, 1, 3), leaf=Bernoulli(), num_components=2, channels=2, patch_size=2, share_leaves=True)),
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Gaussian(min_std=1e-3), num_components=2, channels=2, num_classes=2)),
]
EDGE_IDS = [f"{c.__name__}-{kw['leaf']}-{i}" for i, (c, kw) in enumerate(EDGE)]


def edge_inputs(model, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input (discrete leaves) or 64 float32 inputs (Gaussian: half near the model's
    samples, half at any scale), with a random quarter of the variables missing."""
    g = torch.Generator().manual_seed(seed)
    if model.leaf_spec.is_discrete:
        x = all_inputs(model.in_shape, model.leaves.num_values)
    else:
        near = model.sample(32, generator=g).float()
        far = torch.randn(32, *model.in_shape, generator=g) * 10 ** torch.randint(0, 5, (32, 1, 1, 1), generator=g)
        x = torch.cat([near, far])
    return x, torch.rand(x.shape, generator=g) < 0.25


def path_magnitude(model, scale: float) -> float:
    """A bound on the log-values summed along one latent path: every factor (root, sum nodes,
    leaf variables) has a log-value of magnitude at most ``2 * scale + log K``."""
    factors = 1 + sum(layer.num_positions for layer in model.sums) + model.num_variables
    return 1.0 + factors * (2 * scale + math.log(max(model.channels) + 3))


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("cls,kwargs", EDGE, ids=EDGE_IDS)
def test_extreme_parameters_float32_against_exact_enumeration(cls, kwargs, scale):
    """log P(x), every level's values, gradients and the prior flow: float32 within a few float32
    ulps of the magnitudes involved of the exact float64 log-domain enumeration over all latents
    (float64 within 1e-9 of it), every value and gradient finite."""
    for seed in range(2):
        torch.manual_seed(seed)
        m32 = extreme_parameters(cls(**kwargs), scale, seed)
        m64 = copy.deepcopy(m32).double()
        x, missing = edge_inputs(m32, seed)
        exact = torch.logsumexp(latent_log_joint(m64, x.double() if x.is_floating_point() else x, missing).flatten(1), 1)
        tolerance = 8 * EPS32 * (path_magnitude(m32, scale) + exact.abs())
        if not m32.leaf_spec.is_discrete:  # Gaussian log-densities are not bounded by the scale
            with torch.no_grad():
                tolerance = tolerance + 8 * EPS32 * m64.level_log_probs(x.double(), missing)[0].abs().amax((1, 2, 3))

        log_p32 = m32.log_prob(x, missing)
        log_p64 = m64.log_prob(x.double() if x.is_floating_point() else x, missing)
        assert torch.isfinite(log_p32).all() and torch.isfinite(log_p64).all()
        assert ((log_p64 - exact).abs() <= 1e-9 * (1 + exact.abs()) + 1e-12 * tolerance / EPS32).all()
        assert ((log_p32.double() - exact).abs() <= tolerance).all(), (log_p32.double() - exact).abs().max()

        # Gradients are posterior-weighted scores. A log-value error d changes a posterior by a
        # factor e^(+-2d); the scores of logits are at most 1, so the gradients of discrete
        # models agree within sum_b u_b 2 d_b. Gaussian scores (z / sigma, up to 1e10 here) make
        # float32 posteriors between components of log-density -1e14 meaningless: finite only.
        upstream = torch.rand(len(x), generator=torch.Generator().manual_seed(seed))
        (log_p32 * upstream).sum().backward()
        (log_p64 * upstream.double()).sum().backward()
        grad_tolerance = float((upstream.double() * 2 * tolerance).sum())
        for (name, p32), p64 in zip(m32.named_parameters(), m64.parameters()):
            if p32.grad is None:
                continue
            assert torch.isfinite(p32.grad).all() and torch.isfinite(p64.grad).all(), name
            if m32.leaf_spec.is_discrete:
                assert (p32.grad.double() - p64.grad).abs().max() <= grad_tolerance, name

        with torch.no_grad():
            x64 = x.double() if x.is_floating_point() else x
            for v32, v64 in zip(m32.level_log_probs(x, missing), m64.level_log_probs(x64, missing)):
                assert torch.isfinite(v32).all()
                bound = 8 * EPS32 * (path_magnitude(m32, scale) + v64.abs())
                assert ((v32.double() - v64).abs() <= bound).all()
            for f32, f64 in zip(m32.latent_marginals(), m64.latent_marginals()):
                assert (f32.double() - f64).abs().max() <= 1e-6


def factor_log_probs(model, x: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
    """(n,): the smallest float64 log-probability among the choices of a sampled ``x`` of class 0
    with its latents (root channel, every sum node's input channel, every discrete leaf value)."""
    n = x.shape[0]
    smallest = model.root.log_weights().double()[0][0, latents[-1].view(n)]
    for level in range(1, model.num_levels + 1):
        layer = model.sums[level - 1]
        parent = model.pools[level - 1].expand(latents[level]).reshape(n, -1)
        log_w = layer.log_weights().double().expand(layer.num_positions, -1, -1)
        chosen = log_w[torch.arange(layer.num_positions), parent, latents[level - 1].reshape(n, -1)]
        smallest = torch.minimum(smallest, chosen.amin(1))
    log_f = torch.log_softmax(model.leaves.logits.double(), dim=2).expand(model.leaves.num_positions, -1, -1, -1)
    values = model._to_patches(x, 0)  # (P, n, V)
    components = latents[0].reshape(n, -1).t()  # (P, n)
    p, v = torch.arange(values.shape[0]).view(-1, 1, 1), torch.arange(values.shape[2]).view(1, 1, -1)
    per_variable = log_f[p, v, values, components.unsqueeze(-1)]  # (P, n, V)
    real = model.present_variables.unsqueeze(1)  # padding is never sampled into the output
    return torch.minimum(smallest, per_variable.masked_fill(~real, 0).amin((0, 2)))


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("cls,kwargs", EDGE[:4], ids=EDGE_IDS[:4])
def test_extreme_parameters_samples_stay_in_the_support(cls, kwargs, scale):
    """Samples and inpainted values (float32 models): every choice has a positive float64
    probability, every value lies in the leaf's range."""
    for seed in range(2):
        torch.manual_seed(seed)
        model = extreme_parameters(cls(**kwargs), scale, seed)
        model.root.logits.data[0] = torch.tensor([0.0] + [-1e4] * (model.channels[-1] - 1))[: model.channels[-1]]
        x, latents = model.sample(3000, y=0, generator=torch.Generator().manual_seed(seed), return_latents=True)
        assert 0 <= int(x.min()) and int(x.max()) < model.leaves.num_values
        assert (factor_log_probs(model, x, latents) > LOG_TINY64).all()
        missing = torch.ones_like(x[:500], dtype=torch.bool)
        filled = model.inpaint(x[:500], missing, generator=torch.Generator().manual_seed(seed))
        assert 0 <= int(filled.min()) and int(filled.max()) < model.leaves.num_values


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("cls,kwargs", EDGE[:4], ids=EDGE_IDS[:4])
def test_extreme_parameters_mpe_and_probe(cls, kwargs, scale):
    """The float32 MPE is a joint argmax of the exact float64 enumeration (to float32 precision);
    the probe's exact parts (H^0, caps, bounds) agree between float32 and float64."""
    for seed in range(2):
        torch.manual_seed(seed)
        m32 = extreme_parameters(cls(**kwargs), scale, seed)
        m64 = copy.deepcopy(m32).double()
        x_all = all_inputs(m32.in_shape, m32.leaves.num_values)
        joint = latent_log_joint(m64, x_all).flatten(1).amax(1)  # (N,): max over y and z
        g = torch.Generator().manual_seed(seed)
        x = x_all[torch.randint(len(x_all), (16,), generator=g)]
        missing = torch.rand(x.shape, generator=g) < 0.5
        filled = m32.inpaint(x, missing, mode="mpe")
        consistent = ((x_all.unsqueeze(0) == x.unsqueeze(1)) | missing.unsqueeze(1)).flatten(2).all(2)  # (16, N)
        best = joint.masked_fill(~consistent, -math.inf).amax(1)
        got = latent_log_joint(m64, filled).flatten(1).amax(1)
        assert ((got - best).abs() <= 8 * EPS32 * (path_magnitude(m32, scale) + best.abs())).all()

        r32, r64 = probe(m32, num_samples=64, seed=0), probe(m64, num_samples=64, seed=0)
        assert r32.levels[0].value == pytest.approx(r64.levels[0].value, abs=1e-4)
        assert r32.root_cap == pytest.approx(r64.root_cap, abs=1e-4)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(r32.caps, r64.caps))
        assert all(a == pytest.approx(b, abs=1e-4) for a, b in zip(r32.bounds, r64.bounds))
        assert math.isfinite(r32.h_x.value) and math.isfinite(r32.h_x.se)


# ------------------------------------------------------- float32 CDF rows and tiny weights
def test_categorical_samples_with_float32_cdfs_stay_in_the_support():
    """Sharp categorical leaves whose float32 CDF rows may pass 1 before their end: samples and
    inpainted values stay in ``0 .. 255``, at the frequencies of the one component drawn."""
    torch.manual_seed(0)
    model = CPConvAC(in_shape=(1, 1, 1), leaf=Categorical(256), num_components=3, rank=1)
    with torch.no_grad():
        model.leaves.logits.normal_(0, 4)
        model.leaves.logits[0, 0, 250:, 1] = -100
        model.sums[0].logits.copy_(torch.tensor([-1e4, -1e4, 0.0]).view_as(model.sums[0].logits))
    samples = model.sample(4_000_000, generator=torch.Generator().manual_seed(0))
    assert int(samples.min()) >= 0 and int(samples.max()) <= 255
    # component 2 only (the others have weight e^-1e4): the frequencies follow its row
    probs = torch.softmax(model.leaves.logits[0, 0, :, 2].double(), 0)
    assert chi_square_pvalue(samples.flatten(), probs) > 1e-3
    x = torch.zeros(1_000_000, 1, 1, 1, dtype=torch.long)
    filled = model.inpaint(x, torch.ones_like(x, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    assert int(filled.min()) >= 0 and int(filled.max()) <= 255


def test_sample_from_cdf_never_picks_an_empty_step():
    """Unnormalized float32 CDF rows that overshoot their end, step down or end in
    zero-probability values: every draw lies in the support, at the right frequencies."""
    one = 1.0 + 2 * EPS32
    rows = torch.tensor([
        [0.0, 0.25, one, one, 1.0],  # passes 1 before the end; values 0, 3 and 4 have probability 0
        [0.5, 0.3, 1.0, 1.0, 1.0],  # steps down (as a parallel scan may, by an ulp): value 1 impossible
        [0.0, 0.0, 0.0, 0.0, 3.0],  # unnormalized: only the last value
    ])
    n = 200_000
    draws = sample_from_cdf(rows.unsqueeze(1).expand(-1, n, -1), torch.Generator().manual_seed(0))  # (3, n)
    for row, allowed in zip(draws, [{1, 2}, {0, 2}, {4}]):
        assert set(row.unique().tolist()) == allowed
    assert abs(float((draws[0] == 1).double().mean()) - 0.25) < 5 * (0.25 * 0.75 / n) ** 0.5


@pytest.mark.parametrize("gap,value,leaf_grads,sum_grads", [
    (110.0, -109.59453, [-1 / 6, -2 / 3, 1 / 6, 2 / 3], [1 / 3, -1 / 3]),
    (90.0, -89.59453, [-1 / 6, -2 / 3, 1 / 6, 2 / 3], [1 / 3, -1 / 3]),
])
def test_sum_with_a_tiny_weight_on_the_largest_child(gap, value, leaf_grads, sum_grads):
    """A weight ``e^-G`` on the child with the largest value: the value and gradients are
    float64's, where a plain shifted linear sum would underflow to -inf (G = 110) or give
    inf/NaN gradients (G = 90)."""
    model = CPConvAC(in_shape=(1, 1, 1), leaf=Categorical(2), num_components=2, rank=1)
    with torch.no_grad():
        model.leaves.logits.copy_(torch.tensor([[[[0.0, gap], [0.0, 0.0]]]]))
        model.sums[0].logits.copy_(torch.tensor([-gap, 0.0]).view_as(model.sums[0].logits))
    log_p = model.log_prob(torch.ones(1, 1, 1, 1, dtype=torch.long))
    log_p.sum().backward()
    assert log_p.item() == pytest.approx(value, abs=1e-4)
    assert torch.allclose(model.leaves.logits.grad.flatten(), torch.tensor(leaf_grads), atol=1e-5)
    assert torch.allclose(model.sums[0].logits.grad.flatten(), torch.tensor(sum_grads), atol=1e-5)
