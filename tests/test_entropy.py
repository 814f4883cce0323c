"""Entropy probe estimates against exact enumeration on tiny discrete models (DESIGN section 2)."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from convac import Bernoulli, Categorical, CPConvAC, Gaussian, HTConvAC
from convac.entropy import Estimate, estimators, probe
from convac.entropy import report as report_module
from tests.conftest import all_inputs, latent_log_joint, shuffle_order
from tests.test_model import scope_sizes

MODELS = [
    (HTConvAC, dict(in_shape=(1, 1, 8), leaf=Bernoulli(), num_components=3, channels=3)),
    (HTConvAC, dict(in_shape=(1, 2, 3), leaf=Categorical(3), num_components=2, channels=[3, 2], num_classes=2)),
    (HTConvAC, dict(in_shape=(1, 2, 4), leaf=Bernoulli(), num_components=2, channels=2, share_weights=True, share_leaves=True)),
    (CPConvAC, dict(in_shape=(1, 2, 3), leaf=Categorical(3), num_components=3, rank=4)),
    (CPConvAC, dict(in_shape=(1, 1, 6), leaf=Bernoulli(), num_components=2, rank=3, num_classes=3)),
    # patches that do not divide the input: the padded variables are no part of any entropy
    (HTConvAC, dict(in_shape=(1, 3, 3), leaf=Bernoulli(), num_components=2, channels=3, patch_size=2)),
    (CPConvAC, dict(in_shape=(2, 1, 3), leaf=Categorical(3), num_components=2, rank=2, patch_size=2)),
    # mixtures of learned trees (random orders): the repetition is the root's latent
    (HTConvAC, dict(in_shape=(1, 1, 6), leaf=Bernoulli(), num_components=2, channels=[3, 2, 2], structure="learned", num_repetitions=3)),
    (HTConvAC, dict(in_shape=(1, 2, 3), leaf=Categorical(3), num_components=2, channels=2, structure="learned", num_repetitions=2, num_classes=2)),
]


def build(index: int, seed: int, sharpness: float = 1.0):
    cls, kwargs = MODELS[index]
    torch.manual_seed(seed)
    model = cls(**kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpness)
    return shuffle_order(model, seed)


def block_entropy(values: torch.Tensor, sizes: torch.Tensor, num_values: int, num_variables: int) -> torch.Tensor:
    """Exact entropy of every node from its log-values over all inputs.

    ``values`` (N, K, H, W) over all ``N = v^D`` inputs; a node depends on its ``|S|`` variables
    only, so ``H = -(1 / v^(D - |S|)) sum_x p(x_S) log p(x_S)``. Returns (K, H*W).
    """
    flat = values.flatten(2)
    return -(flat.exp() * flat).sum(0) / num_values ** (num_variables - sizes).double()


@torch.no_grad()
def exact_quantities(model):
    """Exact H^l, H(X), H(X|Y), per-mapping gaps and per-node entropies by enumeration."""
    v = model.leaves.num_values
    x = all_inputs(model.in_shape, v)
    d = model.num_variables
    levels = model.level_log_probs(x)
    sizes = scope_sizes(model)
    flows = model.latent_marginals()
    nodes = [block_entropy(val, s, v, d) for val, s in zip(levels, sizes)]  # (K_l, P_l)
    h_levels = [float((f.flatten(1) * n).sum()) for f, n in zip(flows, nodes)]
    log_px = model.log_prob(x)
    h_x = float(-(log_px.exp() * log_px).sum())
    log_px_y = model(x)
    h_x_y = float((model.log_class_prior().exp() * -(log_px_y.exp() * log_px_y).sum(0)).sum())
    gaps = []
    for level in range(1, model.num_levels + 1):
        layer, pool = model.sums[level - 1], model.pools[level - 1]
        log_w = layer.log_weights().expand(layer.num_positions, -1, -1)  # (P, K_l, K_{l-1})
        child = levels[level - 1].flatten(2)  # (N, K_{l-1}, P)
        mixture = torch.logsumexp(log_w.permute(1, 2, 0).unsqueeze(0) + child.unsqueeze(1), dim=2)  # (N, K_l, P)
        h_mix = block_entropy(mixture, sizes[level - 1], v, d)  # (K_l, P)
        parent_flow = pool.expand(flows[level]).flatten(1)  # (K_l, P)
        child_flow = flows[level - 1].flatten(1)
        gaps.append(((parent_flow * h_mix).sum(0) - (child_flow * nodes[level - 1]).sum(0)).view(layer.grid))
    return dict(levels=h_levels, h_x=h_x, h_x_y=h_x_y, gaps=gaps, root_gap=h_x - h_levels[-1], nodes=nodes)


# Near-deterministic weights make some outcomes rare events that 4,000 samples may not see, so
# the sample standard error underestimates the true one where a quantity is tiny (1e-4 nats or
# less); an absolute floor of 2e-4 nats covers that and is negligible beside the entropies.
RARE_EVENT_FLOOR = 2e-4
# In the mixtures, sharper than 3 the per-node estimates (1,000 samples a node) meet outcomes too
# rare to show in their sample standard error (at sharpness 5: a 5.8-SE deviation whose standard
# error is underestimated 3.6-fold; at 10,000 samples it is 0.4 SE).
CASES = [(i, seed, min(sharp, 3.0) if MODELS[i][1].get("num_repetitions", 1) > 1 else sharp)
         for i in range(len(MODELS)) for seed, sharp in [(0, 1.0), (1, 2.0), (2, 5.0)]]


@pytest.mark.parametrize("index,seed,sharpness", CASES)
def test_monte_carlo_estimates_match_enumeration(index, seed, sharpness):
    model = build(index, seed, sharpness)
    exact = exact_quantities(model)
    report = probe(model, num_samples=4000, seed=seed, per_node=True)

    assert report.levels[0].value == pytest.approx(exact["levels"][0], abs=1e-9)  # H^0 is exact
    for level in range(1, model.num_levels + 1):
        for est in (report.levels[level], report.levels_tele[level]):
            assert abs(est.value - exact["levels"][level]) <= 4 * est.se + RARE_EVENT_FLOOR, f"H{level}"
    for est in (report.h_x, report.h_x_tele):
        assert abs(est.value - exact["h_x"]) <= 4 * est.se + RARE_EVENT_FLOOR
    if model.num_classes > 1:
        assert abs(report.h_x_given_y.value - exact["h_x_y"]) <= 4 * report.h_x_given_y.se + RARE_EVENT_FLOOR
    for gap, se, true in zip(report.gaps, report.gap_se, exact["gaps"]):
        assert ((gap - true).abs() <= 4 * se + RARE_EVENT_FLOOR).all()
    assert abs(report.root_gap.value - exact["root_gap"]) <= 4 * report.root_gap.se + RARE_EVENT_FLOOR
    for (mean, se), true in zip(report.node_entropies, exact["nodes"]):
        assert ((mean.flatten(1) - true).abs() <= 4 * se.flatten(1) + RARE_EVENT_FLOOR).all()


@pytest.mark.parametrize("index,seed,sharpness", CASES)
def test_exact_chain_is_monotone_gaps_capped_and_bounds_bracket(index, seed, sharpness):
    model = build(index, seed, sharpness)
    exact = exact_quantities(model)
    chain = exact["levels"] + [exact["h_x"]]
    assert all(a <= b + 1e-9 for a, b in zip(chain, chain[1:]))
    report = probe(model, num_samples=64, seed=0)
    for gap, cap in zip(exact["gaps"], report.caps):
        assert (gap >= -1e-9).all() and (gap <= cap + 1e-9).all()
    assert -1e-9 <= exact["root_gap"] <= report.root_cap + 1e-9
    log_k = [math.log(k) for k in model.channels[:-1]]
    assert all((cap <= lk + 1e-9).all() for cap, lk in zip(report.caps, log_k))
    # the gaps of all mappings add up to H(X) - H^0
    assert sum(float(g.sum()) for g in exact["gaps"]) + exact["root_gap"] == pytest.approx(chain[-1] - chain[0], abs=1e-8)
    for (low, high), true in zip(report.bounds, exact["levels"]):
        assert low - 1e-9 <= true <= high + 1e-9
    assert report.h_x_bounds[0] - 1e-9 <= exact["h_x"] <= report.h_x_bounds[1] + 1e-9


def test_number_of_mappings_follows_the_paper():
    ht = probe(build(0, 0), num_samples=16)  # binary HT over N = 8 variables: 2N - 1 mappings
    assert ht.num_mappings == 15
    cp = probe(build(4, 0), num_samples=16)  # CP over N = 6 variables: N + 1
    assert cp.num_mappings == 7


def test_metrics_names_and_beta_consistency():
    model = build(1, 0)
    report = probe(model, num_samples=500)
    metrics = report.metrics()
    levels = model.num_levels
    expected = {f"entropy/H{l}" for l in range(levels + 1)} | {f"entropy/H{l}_se" for l in range(levels + 1)}
    expected |= {f"entropy/H{l}_tele" for l in range(levels + 1)} | {f"scaling/C{l}" for l in range(1, levels + 1)}
    expected |= {f"scaling/beta{l}" for l in range(1, levels + 1)}
    expected |= {f"scaling/C{l}_se" for l in range(1, levels + 1)}
    expected |= {"entropy/H_X", "entropy/H_X_se", "entropy/H_X_given_Y", "scaling/C_top", "scaling/C_max",
                 "scaling/cap_max", "scaling/beta_top", "scaling/beta_max", "scaling/additive_slack",
                 "scaling/ratio_slack", "scaling/min_gap_z", "entropy/probe_seconds"}
    expected |= {f"scaling/{q}_max_{k}" for q in ("C", "beta") for k in ("split", "se", "upper")}
    assert expected <= set(metrics)
    chain = [metrics[f"entropy/H{l}"] for l in range(levels + 1)] + [metrics["entropy/H_X"]]
    betas = [metrics[f"scaling/beta{l}"] for l in range(1, levels + 1)] + [metrics["scaling/beta_top"]]
    assert all(math.isfinite(b) for b in betas)
    assert betas == pytest.approx([b / a for a, b in zip(chain, chain[1:])])
    assert metrics["scaling/beta_max"] == max(betas)
    assert metrics["scaling/C_max"] <= metrics["scaling/cap_max"] + 4 * max(e.se for e in report.levels)
    # the upper values: the largest estimate plus 1.96 of its own SE, over every candidate
    ses = [g.flatten() for g in report.gap_se] + [torch.tensor([report.root_gap.se])]
    gaps = [g.flatten() for g in report.gaps] + [torch.tensor([report.root_gap.value])]
    assert metrics["scaling/C_max_upper"] == pytest.approx(float(torch.cat(gaps).add(1.96 * torch.cat(ses)).max()))
    assert metrics["scaling/beta_max_upper"] == pytest.approx(max(b + 1.96 * se for b, se in zip(betas, report.beta_se)))
    # 500 samples, two equal halves: the cross-fitted C_max is at most the plain one
    assert metrics["scaling/C_max_split"] <= metrics["scaling/C_max"] < metrics["scaling/C_max_upper"]
    assert metrics["scaling/beta_max"] < metrics["scaling/beta_max_upper"]
    assert all(metrics[f"scaling/{q}_max_se"] > 0 for q in ("C", "beta"))
    # the slacks are those of checks(), from the upper values of C_max and beta_max
    assert {k: metrics[f"scaling/{k}"] for k in report.checks()} == report.checks()
    assert metrics["scaling/additive_slack"] == pytest.approx(
        report.num_mappings * metrics["scaling/C_max_upper"] - (chain[-1] - chain[0]))
    assert metrics["scaling/ratio_slack"] == pytest.approx(
        metrics["scaling/beta_max_upper"] ** (levels + 1) - chain[-1] / chain[0])


def test_layer_gaps_and_min_gap_z_from_the_gaps_of_a_report():
    """``C_l`` sums a layer's gaps, its SE is that of the per-sample layer sums (NaN without them);
    ``min_gap_z`` is the smallest finite ``gap / SE`` (a zero SE gives none), NaN when no SE is
    positive."""
    report = probe(build(1, 0), num_samples=16)
    gaps = [torch.tensor([[1.0, 2.0], [0.0, -3.0]], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64)]
    ses = [torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([[8.0]], dtype=torch.float64)]
    sums = [np.array([-1.0, 1.0, -1.0, 1.0]), np.array([4.0, 4.0, 4.0, 4.0])]  # SDs 2 / sqrt(3) and 0
    report = dataclasses.replace(report, gaps=gaps, gap_se=ses, root_gap=Estimate(1.0, 0.0), layer_terms=sums)
    # not the root of the summed variances (sqrt(1.25) and 8): the per-sample sums' SE
    assert [(e.value, e.se) for e in report.layer_gaps] == [(0.0, pytest.approx(1 / math.sqrt(3))), (4.0, 0.0)]
    assert all(math.isnan(e.se) for e in dataclasses.replace(report, layer_terms=None).layer_gaps)
    assert report.min_gap_z == -3.0  # 2 / 0, 0 / 0 and the root's 1 / 0 are left out
    assert dataclasses.replace(report, root_gap=Estimate(-1.0, 0.25)).min_gap_z == -4.0
    no_se = dataclasses.replace(report, gap_se=[torch.zeros_like(g) for g in gaps])
    assert math.isnan(no_se.min_gap_z)


def test_gaussian_leaves_give_nan_beta_unless_binned():
    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), Gaussian(min_std=0.05), 3, 3)
    plain = probe(model, num_samples=256)
    assert math.isnan(plain.metrics()["scaling/beta_max"]) and "bin_width" in plain.notes[0]
    binned = probe(model, num_samples=256, bin_width=1 / 16)
    offset = 16 * math.log(16)
    assert binned.levels[0].value == pytest.approx(plain.levels[0].value + offset)
    assert binned.h_x.value == pytest.approx(plain.h_x.value + offset)
    assert math.isfinite(binned.metrics()["scaling/beta_max"])
    # differential entropies: the leaf level is exact, the chain still rises
    assert plain.levels[0].value <= plain.h_x.value + 4 * plain.h_x.se


def test_probe_is_reproducible_and_leaves_training_mode():
    model = build(0, 3)
    model.train()
    first, second = probe(model, num_samples=300, seed=5), probe(model, num_samples=300, seed=5)
    assert first.h_x.value == second.h_x.value and model.training
    # the probe does not switch the mode: no ConvAC layer depends on it (no dropout, no batch norm)
    model.eval()
    evaluated = probe(model, num_samples=300, seed=5)
    assert not model.training
    assert {**evaluated.metrics(), "entropy/probe_seconds": 0} == {**first.metrics(), "entropy/probe_seconds": 0}
    assert probe(model, num_samples=300, seed=6).h_x.value != first.h_x.value
    with pytest.raises(ValueError, match="num_samples"):
        probe(model, num_samples=1)


# ---------------------------------------------------------------- control variates
@torch.no_grad()
def exact_control_moments(model) -> dict[str, float]:
    """Exact moments of ``t = -log P(x)``, the leaf term ``c = -sum_i log P(x_i | Z_{0,i})`` and the
    latent term ``d = -log P(y, z)`` under ``P(x, y, z)``, by enumerating every input, class and
    latent (:func:`latent_log_joint`, whose level-0 latents run slowest): the variances of plain
    Monte Carlo, of ``t - c``, of the regression on ``c`` alone and on ``(c, d)``."""
    x = all_inputs(model.in_shape, model.leaves.num_values)
    joint = latent_log_joint(model, x)  # (N, classes, Z): log P(x, y, z)
    n_z0 = model.channels[0] ** (model.grids[0][0] * model.grids[0][1])
    z0 = torch.tensor(list(itertools.product(range(model.channels[0]), repeat=model.grids[0][0] * model.grids[0][1])))
    leaf = model.level_log_probs(x)[0].flatten(2)  # (N, M, P_0)
    c = -leaf[:, z0, torch.arange(z0.shape[1])].sum(-1)  # (N, Z0)
    c = c.repeat_interleave(joint.shape[2] // n_z0, dim=1).unsqueeze(1).expand_as(joint)  # (N, classes, Z)
    d = -(joint + c)  # log P(x, y, z) = log P(y, z) + log P(x | z)
    t = -model.log_prob(x).view(-1, 1, 1).expand_as(joint)
    p = joint.exp()
    mean = lambda v: float((p * v).sum())  # noqa: E731
    centred = [v - mean(v) for v in (t, c, d)]
    cov = torch.tensor([[mean(a * b) for b in centred] for a in centred], dtype=torch.float64)
    var_t, cov_tc = cov[0, 0], cov[0, 1:]
    return dict(h_x=mean(t), h0=mean(c), h_latent=mean(d), var_plain=float(var_t),
                var_unit=float(var_t - 2 * cov[0, 1] + cov[1, 1]), var_leaf=float(var_t - cov[0, 1] ** 2 / cov[1, 1]),
                var_optimal=float(var_t - cov_tc @ torch.linalg.solve(cov[1:, 1:], cov_tc)))


def test_control_variates_never_raise_the_standard_error():
    """With the leaf term subtracted with coefficient 1 the SE of H(X) is 0.0090, above plain Monte
    Carlo's 0.0055 (exact, on this model). The estimated variance-minimizing coefficients
    of the leaf and latent terms give the optimal SE of those two (by enumeration), below the
    leaf term's alone and plain Monte Carlo's; the probe's third control, the difference to the
    telescoped integrand, can only lower it further."""
    torch.manual_seed(1)
    model = CPConvAC(in_shape=(1, 1, 6), leaf=Categorical(2), num_components=2, rank=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.double()
    exact = exact_control_moments(model)
    n = 20000
    plain, unit, leaf, optimal = (math.sqrt(exact[k] / n) for k in ("var_plain", "var_unit", "var_leaf", "var_optimal"))
    assert plain == pytest.approx(0.0055, abs=5e-5) and unit == pytest.approx(0.0090, abs=5e-5)
    assert optimal < leaf < plain
    report = probe(model, num_samples=n, seed=0)
    assert report.levels[0].value == pytest.approx(exact["h0"], abs=1e-9)
    assert report.h_x.se <= 1.03 * optimal
    assert abs(report.h_x.value - exact["h_x"]) <= 4 * report.h_x.se


def test_probe_standard_errors_are_honest():
    """The regression on three controls, with estimated coefficients, at the small sample sizes a
    probe uses: over 100 seeds about 95% of the intervals ``H(X) +- 1.96 SE`` (and of ``H^1``'s)
    cover the enumerated value (0.95 and 0.945 over 200 seeds; the bounds are 3 binomial SEs)."""
    model = build(1, 0, 2.0)  # two levels, two classes
    exact = exact_quantities(model)
    covered_x = covered_1 = 0
    seeds = range(100)
    for seed in seeds:
        report = probe(model, num_samples=128, seed=seed)
        covered_x += abs(report.h_x.value - exact["h_x"]) <= 1.96 * report.h_x.se
        covered_1 += abs(report.levels[1].value - exact["levels"][1]) <= 1.96 * report.levels[1].se
    assert 0.88 <= covered_x / len(seeds) <= 0.99 and 0.88 <= covered_1 / len(seeds) <= 0.99


@pytest.mark.parametrize("index", [1, 2, 4, 5, 6, 7])
def test_latent_entropy_is_the_joint_entropy_of_the_latents(index):
    """``latent_entropy``, the known mean of the latent control variate, equals ``H(Y, Z)`` by
    enumeration of ``P(y, z) = sum_x P(x, y, z)`` (classes, shared weights, patches, a learned
    mixture; the models whose inputs times latents are at most a few million)."""
    model = build(index, 0)
    with torch.no_grad():
        log_p_yz = torch.logsumexp(latent_log_joint(model, all_inputs(model.in_shape, model.leaves.num_values)), dim=0)
        exact = float(-(log_p_yz.exp() * log_p_yz).sum())
        caps, _ = estimators.mapping_caps(model, model.latent_marginals())
        assert estimators.latent_entropy(model, caps) == pytest.approx(exact, abs=1e-9)


def test_controlled_estimate_is_the_regression_estimator():
    """``Estimate.controlled`` on draws with known moments: never a larger SE than plain Monte
    Carlo's (up to ``sqrt((n-1)/(n-2))``), ``sqrt(1 - rho^2)`` of it, and honest: about 95% of
    intervals of +-1.96 SE cover the mean."""
    g = torch.Generator().manual_seed(0)
    covered, reps, n = 0, 400, 60
    for rep in range(reps):
        c = torch.randn(n, generator=g, dtype=torch.float64)
        t = 2.0 + 0.7 * c + math.sqrt(1 - 0.7**2) * torch.randn(n, generator=g, dtype=torch.float64)  # rho = 0.7
        est = Estimate.controlled(t, c, 0.0)
        assert est.se <= Estimate.of(t).se * math.sqrt((n - 1) / (n - 2)) + 1e-15
        covered += abs(est.value - 2.0) <= 1.96 * est.se
    assert 0.91 <= covered / reps <= 0.98  # 0.95 within 3.5 binomial SEs (n = 60 lowers it a little)
    c = torch.randn(200_000, generator=g, dtype=torch.float64)
    t = 0.7 * c + math.sqrt(1 - 0.7**2) * torch.randn(200_000, generator=g, dtype=torch.float64)
    assert Estimate.controlled(t, c, 0.0).se / Estimate.of(t).se == pytest.approx(math.sqrt(1 - 0.7**2), rel=0.01)
    constant = Estimate.controlled(t, torch.ones_like(t), 1.0)  # a control without variance changes nothing
    assert constant.value == pytest.approx(Estimate.of(t).value) and constant.se == pytest.approx(Estimate.of(t).se, rel=1e-4)


@pytest.mark.parametrize("design", ["independent", "one", "two", "constant", "collinear", "none"])
def test_controlled_least_squares_is_numpys(design):
    """The normal equations of ``Estimate.controlled`` give NumPy's SVD least squares: the same
    coefficients on independent controls (1 to 3 of them), and on degenerate ones (a constant
    control, one the others determine, none with variance) the same rank, residuals and
    estimate, since the known means obey the same linear relation as the controls."""
    g = np.random.default_rng(0)
    n = 64
    c = g.normal(size=(n, 3)) * [1.0, 10.0, 0.1]
    means = np.array([0.1, -0.2, 0.3])
    if design == "one":
        c, means = c[:, :1], means[:1]
    elif design == "two":
        c, means = c[:, :2], means[:2]
    elif design == "constant":
        c[:, 1] = means[1] = 2.5
    elif design == "collinear":
        c[:, 2], means[2] = c[:, 0] - 3 * c[:, 1], means[0] - 3 * means[1]
    elif design == "none":
        c[:], means[:] = 1.0, 1.0
    t = 1.0 + c.sum(1) * 0.4 + g.normal(size=n)
    dc, dt = c - c.mean(0), t - t.mean()
    beta, rank = report_module._least_squares(dc, dt)
    expected, _, expected_rank, _ = np.linalg.lstsq(dc, dt, rcond=None)
    assert rank == expected_rank
    np.testing.assert_allclose(dc @ beta, dc @ expected, atol=1e-12)  # the same fit
    if design in ("independent", "one", "two"):
        np.testing.assert_allclose(beta, expected, rtol=1e-12)
    est = Estimate.controlled(t, c, means)
    residual = dt - dc @ expected
    assert est.value == pytest.approx(t.mean() - (c.mean(0) - means) @ expected, rel=1e-12)
    assert est.se == pytest.approx(math.sqrt(residual @ residual / (n - 1 - expected_rank) / n), rel=1e-12)


def test_probe_leaves_no_inference_tensors_behind():
    """The probe runs under ``torch.inference_mode``: its report and the exact-path plans it
    caches in the model are normal tensors, so training goes on after it (a plan made inside it
    is saved for the next backward pass)."""
    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), Categorical(3), 2, 3)
    with torch.no_grad():
        model.sums[0].logits[0, 0, 0, 0] = -1e4  # position (0, 0) takes the exact path
    report = probe(model, num_samples=16, per_node=True)
    plan = model.sums[0]._plan
    assert plan is not None and not any(t.is_inference() for t in plan)
    tensors = [*report.gaps, *report.gap_se, *report.caps, *(t for node in report.node_entropies for t in node)]
    assert not any(t.is_inference() for t in tensors)
    (-model.log_prob(model.sample(8)).mean()).backward()  # the plan made inside the probe
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- the SE of C_l and the bias of C_max
def moving_siblings(in_shape=(1, 4, 4), separation: float = 2.0):
    """A binary HT with shared leaves and weights whose layer-1 mappings move together: the leaf
    components favour opposite values (logits ``+-separation``); parent channel 0 mixes them
    uniformly (a gap at every child), channel 1 picks component 0 (no gap), and the children of a
    parent share its channel, so siblings' gaps rise and fall together. The weights above are
    uniform, so every mapping of a layer has the same gap; layer 2's are the largest."""
    model = HTConvAC(in_shape, Bernoulli(), num_components=2, channels=2, share_weights=True, share_leaves=True).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.leaves.logits[..., 0] = torch.tensor([separation, -separation])  # (P, V, values, M)
        model.leaves.logits[..., 1] = torch.tensor([-separation, separation])
        model.sums[0].logits[1] = torch.tensor([0.0, -30.0])
    return model


def test_layer_gap_se_is_that_of_the_per_sample_layer_sums():
    """Every mapping of a layer is estimated from the same samples, so the SE of ``C_l`` is that
    of the per-sample layer sums. Over 200 seeds of 64 samples it matches the spread of ``C_1``
    (0.301 against 0.311); the root of the summed per-mapping variances would give half of it
    (0.151), since siblings' gaps move together."""
    torch.set_num_threads(1)  # 200 small probes: a second thread only waits (all the more on a busy machine)
    model = moving_siblings()
    report = probe(model, num_samples=64, seed=0)
    for est, sums, gaps in zip(report.layer_gaps, report.layer_terms, report.gaps):
        assert est.value == pytest.approx(float(gaps.sum())) and est.value == pytest.approx(sums.mean())
        assert est.se == pytest.approx(sums.std(ddof=1) / 8)
    assert report.metrics()["scaling/C1_se"] == report.layer_gaps[0].se
    values, new, old = [], [], []
    for seed in range(200):
        report = probe(model, num_samples=64, seed=seed)
        values.append(report.layer_gaps[0].value)
        new.append(report.layer_gaps[0].se)
        old.append(float(torch.linalg.vector_norm(report.gap_se[0])))
    spread = float(np.std(values, ddof=1))  # relative SE about 5% (200 runs)
    assert float(np.mean(new)) == pytest.approx(spread, rel=0.15)
    assert float(np.mean(old)) < 0.6 * spread


def test_c_max_stays_within_its_interval_as_the_samples_grow():
    """64 equal mappings (layer 2 of a 16x16 HT) hold the largest gap, so the plain
    maximum of 64 estimates is biased upward (the winner's curse): 0.533 with 64 samples, above
    even the 4,096-sample upper value (0.498), against the true 0.487. The 64-sample interval
    ``[lower, upper] = [0.422, 0.570]`` holds the 4,096-sample maximum (0.493) and the true value,
    and the cross-fitted estimate (0.481 +- 0.030) is within 2 of its SEs of the truth."""
    torch.set_num_threads(1)  # small probes: a second thread only waits on a busy machine
    model = moving_siblings((1, 16, 16))
    small, large = (probe(model, num_samples=n, seed=0) for n in (64, 4096))
    truth = large.layer_gaps[1].value / 64  # every layer-2 mapping has the same gap
    assert truth == pytest.approx(0.488, abs=0.002)
    s, big = small.c_max_estimate, large.c_max_estimate
    assert s.lower <= big.value <= s.upper and s.lower <= big.split <= s.upper
    assert s.lower <= truth <= s.upper and big.lower <= truth <= big.upper
    assert abs(s.split - truth) <= 2 * s.se
    # the plain max is biased: by 1.4 to 3.7 per-mapping SEs over 200 seeds
    assert s.value > big.upper and s.value - truth > float(small.gap_se[1].mean())
    metrics = small.metrics()
    assert (metrics["scaling/C_max"], metrics["scaling/C_max_split"], metrics["scaling/C_max_se"],
            metrics["scaling/C_max_upper"]) == (s.value, s.split, s.se, s.upper)


def test_c_max_split_is_unbiased_and_its_interval_covers():
    """Over 200 seeds of 64 samples (the model above): the plain maximum is 0.049 above the true
    gap on average and above it every time (``SE sqrt(2 ln M)`` would be 0.061 for 64 independent
    mappings of per-mapping SE 0.021; these are correlated), the cross-fitted estimate 0.002
    (within 3 SEs of its mean), and the 97.5% confidence values cover the truth (measured: lower
    0.975, upper 1.0)."""
    torch.set_num_threads(1)  # 200 small probes: a second thread only waits (all the more on a busy machine)
    model = moving_siblings((1, 16, 16))
    truth = probe(model, num_samples=4096, seed=1).layer_gaps[1].value / 64
    estimates = [probe(model, num_samples=64, seed=seed).c_max_estimate for seed in range(200)]
    plain = np.array([e.value for e in estimates])
    split = np.array([e.split for e in estimates])
    assert plain.mean() - truth > 0.03 and (plain > truth).all()
    assert abs(split.mean() - truth) <= 3 * split.std() / math.sqrt(len(split)) + 0.001
    assert np.mean([e.lower <= truth for e in estimates]) >= 0.93
    assert np.mean([e.upper >= truth for e in estimates]) >= 0.97


def test_beta_max_stays_within_its_interval_as_the_samples_grow():
    """``beta_max`` with 64 and 4,096 samples (a random 8x8 HT, 4 ratios): the 4,096-sample value
    is inside the 64-sample interval, the SE is the delta method's of the largest ratio, and the
    Gaussian leaves' ratios are NaN (no unit-free ratio) unless binned."""
    torch.set_num_threads(1)  # small probes: a second thread only waits on a busy machine
    torch.manual_seed(0)
    model = HTConvAC((1, 8, 8), Bernoulli(), num_components=4, channels=4).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    small, large = (probe(model, num_samples=n, seed=0) for n in (64, 4096))
    s, big = small.beta_max_estimate, large.beta_max_estimate
    assert s.lower <= big.value <= s.upper and s.lower <= big.split <= s.upper
    assert big.se < s.se / 4  # 1 / sqrt(n): a factor of 8, less the noise of the SEs
    top = int(np.argmax(large.betas))  # a clear maximum (beta_1): both halves pick it
    assert big.split == pytest.approx(big.value, rel=1e-3)
    assert big.se == pytest.approx(large.beta_se[top], rel=0.05)
    gaussian = HTConvAC((1, 4, 4), Gaussian(min_std=0.05), 3, 3)
    plain = probe(gaussian, num_samples=64).metrics()
    assert all(math.isnan(plain[f"scaling/beta_max_{k}"]) for k in ("split", "se", "upper"))
    assert math.isfinite(plain["scaling/C_max_upper"]) and math.isfinite(plain["scaling/additive_slack"])
    binned = probe(gaussian, num_samples=64, bin_width=1 / 16).metrics()
    assert all(math.isfinite(binned[f"scaling/beta_max_{k}"]) for k in ("split", "se", "upper"))


def test_cross_fit_max_selects_on_one_half_and_estimates_on_the_other():
    """The arg max of each half's estimates, read on the other half and averaged; the SE is the
    independent one where both halves pick the same quantity, else the mean of the two SEs."""
    from convac.entropy.report import cross_fit_max

    same = cross_fit_max((np.array([1.0, 3.0, 2.0]), np.array([0.1, 0.3, 0.2])),
                         (np.array([1.5, 2.5, 0.0]), np.array([0.1, 0.4, 0.2])))
    assert same.value == pytest.approx(2.75) and same.se == pytest.approx(math.hypot(0.4, 0.3) / 2)
    crossed = cross_fit_max((np.array([1.0, 3.0, 2.0]), np.array([0.1, 0.3, 0.2])),
                            (np.array([1.0, 0.5, 2.5]), np.array([0.1, 0.4, 0.6])))
    # half 1 picks quantity 1, read on half 2 as 0.5; half 2 picks quantity 2, read on half 1 as 2.0
    assert crossed.value == pytest.approx(1.25) and crossed.se == pytest.approx((0.4 + 0.2) / 2)
    nothing = cross_fit_max((np.full(2, np.nan), np.full(2, np.nan)), (np.ones(2), np.ones(2)))
    assert math.isnan(nothing.value) and math.isnan(nothing.se)
