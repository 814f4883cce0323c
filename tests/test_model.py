"""The ConvAC's exact queries, checked against exhaustive enumeration on tiny discrete models."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from convac import Bernoulli, Categorical, CPConvAC, Gaussian, HTConvAC
from tests.conftest import all_inputs, latent_log_joint, shuffle_order

# (constructor, kwargs): tiny CP and HT models on 1x4 and 2x2 grids, shared and unshared, per class
TINY = [
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, channels=3)),
    (HTConvAC, dict(in_shape=(1, 2, 4), leaf=Bernoulli(), num_components=3, channels=[2, 3], num_classes=2)),
    (HTConvAC, dict(in_shape=(1, 2, 2), leaf=Categorical(3), num_components=2, channels=2, share_leaves=True, share_weights=True)),
    (HTConvAC, dict(in_shape=(1, 1, 5), leaf=Bernoulli(), num_components=2, channels=2, pool=[(1, 2), (1, 3)])),
    (HTConvAC, dict(in_shape=(2, 1, 3), leaf=Bernoulli(), num_components=2, channels=2, patch_size=2, class_prior="learned", num_classes=3)),
    (CPConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, rank=3, num_classes=2)),
    (CPConvAC, dict(in_shape=(1, 2, 2), leaf=Bernoulli(), num_components=3, rank=2, share_leaves=True, share_weights=True)),
    # learned structures (random orders): a mixture of 3 trees over 5 positions, a mixture
    # classifier on an image, and one tree over the 2x2 patches of a 3x3 image
    (HTConvAC, dict(in_shape=(1, 1, 5), leaf=Categorical(3), num_components=2, channels=[3, 2, 2], structure="learned", num_repetitions=3)),
    (HTConvAC, dict(in_shape=(1, 2, 3), leaf=Bernoulli(), num_components=2, channels=2, structure="learned", num_repetitions=2, num_classes=2)),
    (HTConvAC, dict(in_shape=(1, 3, 3), leaf=Bernoulli(), num_components=2, channels=2, patch_size=2, structure="learned")),
]
IDS = [f"{c.__name__}-{i}" for i, (c, _) in enumerate(TINY)]


def build(cls, kwargs, seed=0):
    torch.manual_seed(seed)
    model = cls(**kwargs).double()
    with torch.no_grad():  # break the symmetry of a fresh model a little more
        for p in model.parameters():
            p.mul_(2.0)
    return shuffle_order(model, seed)


def num_values(model):
    return model.leaves.num_values


@pytest.mark.parametrize("cls,kwargs", TINY, ids=IDS)
def test_normalized_over_all_inputs(cls, kwargs):
    model = build(cls, kwargs)
    x = all_inputs(model.in_shape, num_values(model))
    total = torch.logsumexp(model.log_prob(x), 0)
    assert abs(total.item()) < 1e-5
    per_class = torch.logsumexp(model(x), 0)  # each log P(x | y) is normalized too
    assert torch.allclose(per_class, torch.zeros_like(per_class), atol=1e-5)
    posterior = model.log_posterior(x).exp().sum(1)
    assert torch.allclose(posterior, torch.ones_like(posterior), atol=1e-10)


def scope_sizes(model):
    """Number of real (unpadded) variables under every position of every level: [(P_l,)]."""
    counts = model.present_variables.sum(-1).view(-1, 1, 1).double()  # (P_0, 1, 1)
    sizes = [counts]
    for pool in model.pools:
        counts = pool(counts)
        sizes.append(counts)
    return [s.flatten().long() for s in sizes]


@pytest.mark.parametrize("cls,kwargs", TINY, ids=IDS)
def test_every_node_is_normalized_over_its_scope(cls, kwargs):
    model = build(cls, kwargs)
    v = num_values(model)
    x = all_inputs(model.in_shape, v)
    d = model.num_variables
    for level, (values, sizes) in enumerate(zip(model.level_log_probs(x), scope_sizes(model))):
        b, k, h, w = values.shape
        assert (k, h, w) == (model.channels[level], *model.grids[level])
        # node value depends on x_S only: summing over all inputs counts each x_S v^(D-|S|) times
        total = torch.logsumexp(values, 0).reshape(k, h * w) - (d - sizes) * math.log(v)
        assert torch.allclose(total, torch.zeros_like(total), atol=1e-6), f"level {level}"


@pytest.mark.parametrize("cls,kwargs", TINY, ids=IDS)
def test_marginals_equal_brute_force_sums(cls, kwargs):
    model = build(cls, kwargs)
    x = all_inputs(model.in_shape, num_values(model))
    joint = model.log_prob(x)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        missing = torch.rand(model.in_shape, generator=generator) < 0.5
        # group the inputs by their observed part and sum the joint over the missing part
        observed_key = x.masked_fill(missing, -1).flatten(1)
        keys, group = torch.unique(observed_key, dim=0, return_inverse=True)
        brute = torch.full((len(keys),), -math.inf, dtype=torch.float64)
        brute = brute.scatter_reduce(0, group, joint, reduce="amax")
        brute = brute + torch.zeros_like(brute).index_add(0, group, (joint - brute[group]).exp()).log()
        representative = torch.zeros(len(keys), dtype=torch.long).scatter(0, group, torch.arange(len(x)))
        xs = x[representative]
        mask = missing.expand_as(xs)
        assert torch.allclose(model.log_prob(xs, mask), brute, atol=1e-8)
        as_nan = xs.double().masked_fill(mask, float("nan"))  # NaN marks missing values too
        assert torch.allclose(model.log_prob(as_nan), brute, atol=1e-8)


FOLDABLE = [
    (HTConvAC((1, 6, 6), Categorical(5), 4, 6), torch.randint(0, 5, (30, 1, 6, 6)), 0.3),
    (HTConvAC((1, 1, 10), Bernoulli(), 3, 4, structure="learned", num_repetitions=2, share_leaves=True),
     torch.randint(0, 2, (20, 1, 1, 10)).float(), 0.2),
    (CPConvAC((1, 4, 4), Categorical(3), 2, 5, num_classes=2), torch.randint(0, 3, (12, 1, 4, 4)), 0.0),
]


@pytest.mark.parametrize("index", range(len(FOLDABLE)))
def test_folded_leaf_sums_equal_the_layer_by_layer_pass(index):
    """The likelihood folds discrete leaves into the first sum layer (its sums run over the value
    table): the same log-likelihoods and gradients as leaves -> sums, with missing values too."""
    torch.manual_seed(index)
    model, x, missing_share = FOLDABLE[index]
    model = model.double()
    if missing_share:
        missing = torch.rand(x.shape) < missing_share
        x = x.masked_fill(missing, float("nan")) if x.is_floating_point() else x
        missing = None if x.is_floating_point() else missing
    else:
        missing = None
    first_sum_rows = []
    model.sums[0].register_forward_pre_hook(lambda module, args: first_sum_rows.append(args[0].shape[1]))
    results = []
    for fold in (True, False):
        model.fold_leaf_sums = fold
        model.zero_grad()
        log_p = model.log_prob(x, missing)
        log_p.sum().backward()
        results.append((log_p.detach(), [p.grad.clone() for p in model.parameters()]))
    # folded: one row per value, and one for a missing variable when some can be missing
    assert first_sum_rows == [model.leaf_spec.num_values + (missing_share > 0), len(x)]
    (folded, folded_grads), (plain, plain_grads) = results
    torch.testing.assert_close(folded, plain)
    for a, b in zip(folded_grads, plain_grads):
        torch.testing.assert_close(a, b)


def test_leaves_are_folded_by_a_choice_made_when_the_model_is_built():
    """Few values (binary, the digits' 17) fold; many values (256 grey levels), patches of several
    variables and continuous leaves take the layer-by-layer pass; forcing a fold where none
    applies is refused."""
    assert HTConvAC((1, 1, 8), Bernoulli(), 2, 3).fold_leaf_sums
    assert HTConvAC((1, 4, 4), Categorical(17), 2, 3).fold_leaf_sums
    assert not HTConvAC((1, 4, 4), Categorical(256), 2, 3).fold_leaf_sums
    assert not HTConvAC((1, 4, 4), Categorical(17), 2, 3, patch_size=2).fold_leaf_sums
    model = HTConvAC((1, 4, 4), Gaussian(), 2, 3)
    assert not model.fold_leaf_sums
    with pytest.raises(ValueError, match="fold_leaf_sums needs discrete leaves"):
        model.fold_leaf_sums = True
    wide = HTConvAC((1, 4, 4), Categorical(256), 2, 3)
    wide.fold_leaf_sums = True  # forced: the same values by the table
    x = torch.randint(0, 256, (5, 1, 4, 4))
    folded = wide.log_prob(x)
    wide.fold_leaf_sums = False
    torch.testing.assert_close(folded, wide.log_prob(x))


def test_all_missing_gives_log_one():
    model = build(*TINY[1])
    x = torch.zeros(3, *model.in_shape, dtype=torch.long)
    assert torch.allclose(model.log_prob(x, torch.ones_like(x, dtype=torch.bool)), torch.zeros(3, dtype=torch.float64))


def chi_square_pvalue(samples: torch.Tensor, probabilities: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=len(probabilities)).double().numpy()
    expected = probabilities.detach().double().numpy() * len(samples)
    keep = expected > 5  # pool the rare cells, as the test requires
    observed = np.append(counts[keep], counts[~keep].sum())
    expect = np.append(expected[keep], expected[~keep].sum())
    if expect[-1] == 0:
        observed, expect = observed[:-1], expect[:-1]
    return stats.chisquare(observed, expect * observed.sum() / expect.sum()).pvalue


def encode(x: torch.Tensor, v: int) -> torch.Tensor:
    """Index of each input in the order of :func:`all_inputs`."""
    flat = x.flatten(1)
    powers = v ** torch.arange(flat.shape[1] - 1, -1, -1)
    return (flat * powers).sum(1)


@pytest.mark.parametrize("index", [0, 1, 4, 5, 7, 8, 9])
def test_samples_follow_the_model(index):
    model = build(*TINY[index])
    v = num_values(model)
    probs = model.log_prob(all_inputs(model.in_shape, v)).exp()
    generator = torch.Generator().manual_seed(123)
    samples = model.sample(20000, generator=generator)
    assert samples.dtype == torch.long and samples.shape == (20000, *model.in_shape)
    assert chi_square_pvalue(encode(samples, v), probs) > 1e-3


def test_class_conditional_samples_follow_p_x_given_y():
    model = build(*TINY[1])
    probs = model(all_inputs(model.in_shape, 2))[:, 1].exp()
    samples = model.sample(20000, y=1, generator=torch.Generator().manual_seed(5))
    assert chi_square_pvalue(encode(samples, 2), probs) > 1e-3


@pytest.mark.parametrize("index", [0, 1, 3, 4, 5, 6, 7, 8])
def test_latent_frequencies_match_latent_marginals(index):
    model = build(*TINY[index])
    n = 20000
    _, latents = model.sample(n, generator=torch.Generator().manual_seed(7), return_latents=True)
    marginals = model.latent_marginals()
    assert len(latents) == len(marginals) == model.num_levels + 1
    for level, (z, pi) in enumerate(zip(latents, marginals)):
        k, h, w = pi.shape
        assert z.shape == (n, h, w) and (k, h, w) == (model.channels[level], *model.grids[level])
        # each position of repetition r is on the sampled path with probability P(r)
        on_path, p_rep = (z >= 0).double().mean(0), pi.sum(0).detach()
        assert torch.allclose(p_rep, p_rep[:, :1].expand(h, w), atol=1e-10)
        assert ((on_path - p_rep).abs() <= 4.5 * (p_rep * (1 - p_rep) / n).clamp_min(0).sqrt() + 1e-9).all()
        freq = torch.nn.functional.one_hot(z.clamp_min(0), k).double().mul_((z >= 0).unsqueeze(-1)).mean(0).permute(2, 0, 1)
        se = (pi * (1 - pi) / n).sqrt().clamp_min(1e-12)
        assert ((freq - pi).abs() <= 4.5 * se + 1e-9).all(), f"level {level}"


def test_latent_marginals_equal_expected_posteriors():
    """pi_L(k) = E_x[P(Z_L = k | x)] (DESIGN section 2) by enumeration at the root."""
    model = build(*TINY[0])
    x = all_inputs(model.in_shape, 3)
    top = model.level_log_probs(x)[-1][:, :, 0, 0]  # (N, K_L)
    log_w = model.root.log_weights()[0][0]
    joint = top + log_w  # log P(x, Z_L = k)
    expected = (joint.exp()).sum(0)  # sum_x P(x) P(k | x) = sum_x P(x, k)
    assert torch.allclose(expected, model.latent_marginals()[-1].flatten(), atol=1e-10)


def test_inpainting_samples_follow_the_conditional():
    model = build(*TINY[0])
    x_all = all_inputs(model.in_shape, 3)
    missing = torch.tensor([True, False, True, False]).view(1, 1, 1, 4)
    observed = torch.tensor([0, 2, 0, 1]).view(1, 1, 1, 4)
    consistent = (x_all.masked_fill(missing, 0) == observed.masked_fill(missing, 0)).flatten(1).all(1)
    cond = model.log_prob(x_all).exp() * consistent
    cond = cond / cond.sum()
    n = 20000
    filled = model.inpaint(observed.expand(n, -1, -1, -1), missing.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(3))
    assert (filled[:, ~missing.view(1, 1, 4)] == observed[:, ~missing.view(1, 1, 4)]).all()
    assert chi_square_pvalue(encode(filled, 3), cond) > 1e-3


def test_inpainting_mpe_is_deterministic_and_keeps_observed_values():
    model = build(*TINY[1])
    x = all_inputs(model.in_shape, 2)
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, 0, 0, :] = True
    first = model.inpaint(x, missing, mode="mpe")
    assert torch.equal(first, model.inpaint(x, missing, mode="mpe"))
    assert torch.equal(first[~missing], x[~missing])
    with pytest.raises(ValueError, match="mode"):
        model.inpaint(x, missing, mode="best")


# tiny models whose latents can be enumerated: CP and HT, per class (learned prior), shared, padded patches
MPE_MODELS = [
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, channels=3)),
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Bernoulli(), num_components=2, channels=2, num_classes=2)),
    (CPConvAC, dict(in_shape=(1, 2, 2), leaf=Bernoulli(), num_components=3, rank=2, share_leaves=True, share_weights=True)),
    (HTConvAC, dict(in_shape=(2, 1, 3), leaf=Bernoulli(), num_components=2, channels=2, patch_size=2, class_prior="learned", num_classes=3)),
    (CPConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, rank=3, num_classes=2)),
    # learned structures (random orders): a mixture of two trees, and one over padded patches
    (HTConvAC, dict(in_shape=(1, 1, 4), leaf=Categorical(3), num_components=2, channels=2, structure="learned", num_repetitions=2, num_classes=2)),
    (HTConvAC, dict(in_shape=(1, 3, 3), leaf=Bernoulli(), num_components=2, channels=[2, 2], patch_size=2, structure="learned")),
]


def best_consistent(joint: torch.Tensor, x_all: torch.Tensor, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """(B,): the largest ``joint`` (N,) over the inputs of ``x_all`` that agree with ``x`` on its
    observed variables."""
    consistent = ((x_all.unsqueeze(0) == x.unsqueeze(1)) | missing.unsqueeze(1)).flatten(2).all(2)  # (B, N)
    return joint.masked_fill(~consistent, -math.inf).amax(1)


@pytest.mark.parametrize("cls,kwargs", MPE_MODELS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(MPE_MODELS)])
def test_mpe_is_the_joint_argmax_by_enumeration(cls, kwargs):
    """``inpaint(mode="mpe")`` completes ``x`` with a maximizer of ``P(x_obs, x_mis, z, y)`` over
    the missing variables, every latent ``z`` and the class ``y`` (or of ``P(x_obs, x_mis, z | y)``
    for a given ``y``): checked against the enumeration of every completion and latent."""
    for seed in range(4):
        model = build(cls, kwargs, seed)
        v = num_values(model)
        x_all = all_inputs(model.in_shape, v)
        joint = latent_log_joint(model, x_all)  # (N, classes, Z)
        g = torch.Generator().manual_seed(seed)
        x = x_all[torch.randint(len(x_all), (24,), generator=g)]
        missing = torch.rand(x.shape, generator=g) < torch.rand(24, 1, 1, 1, generator=g)
        filled = model.inpaint(x, missing, mode="mpe")
        assert torch.equal(filled[~missing], x[~missing])
        got = joint[encode(filled, v)].flatten(1).amax(1)  # max over y and z of the completion
        assert torch.allclose(got, best_consistent(joint.flatten(1).amax(1), x_all, x, missing), atol=1e-10)
        for y in range(model.num_classes):
            filled = model.inpaint(x, missing, mode="mpe", y=y)
            got = joint[encode(filled, v), y].amax(1)
            assert torch.allclose(got, best_consistent(joint[:, y].amax(1), x_all, x, missing), atol=1e-10)


def test_gaussian_mpe_is_the_joint_argmax_over_latents():
    """Gaussian leaves: for every latent assignment the best missing values are the chosen
    components' means, so the MPE value is the largest ``log P(x_obs, means, z, y)`` over ``z, y``."""
    model = build(HTConvAC, dict(in_shape=(1, 1, 4), leaf=Gaussian(min_std=0.1), num_components=2, channels=2, num_classes=2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 1, 4, generator=g, dtype=torch.float64)
    missing = torch.rand(x.shape, generator=g) < 0.5
    filled = model.inpaint(x, missing, mode="mpe")
    assert torch.equal(filled[~missing], x[~missing])
    means = model.leaves.mean[:, 0, :]  # (P, M): one variable per position
    z0 = torch.tensor(list(itertools.product(range(2), repeat=4)))  # level-0 latents, in enumeration order
    for b in range(len(x)):
        # the level-0 latents run slowest in the enumeration: block k of Z holds z_0 = z0[k]
        per_z0 = torch.where(missing[b, 0, 0], means[torch.arange(4), z0], x[b, 0, 0]).view(-1, 1, 1, 4)  # (16, 1, 1, 4)
        joint = latent_log_joint(model, per_z0)  # (16, classes, Z)
        block = joint.shape[2] // len(z0)
        best = max(float(joint[k, :, k * block:(k + 1) * block].max()) for k in range(len(z0)))
        assert float(latent_log_joint(model, filled[b:b + 1]).max()) == pytest.approx(best, abs=1e-10)


def test_cp_matches_paper_eq_10():
    """P(X|y) = sum_z a^y_z prod_i sum_d a^{z,i}_d P(x_i|d), computed directly in probability space."""
    model = build(CPConvAC, dict(in_shape=(1, 2, 3), leaf=Categorical(4), num_components=3, rank=5, num_classes=2))
    x = torch.randint(0, 4, (10, 1, 2, 3))
    leaf = model.leaves.log_probabilities().exp()  # (P, 1, V, M)
    a_zid = model.sums[0].weights()  # (P, rank, M)
    a_yz = model.root.weights()[0]  # (classes, rank)
    flat = x.flatten(1)  # (B, P) row-major positions
    expected = torch.ones(10, 2, dtype=torch.float64)
    for b in range(10):
        per_z = torch.ones(5, dtype=torch.float64)
        for i in range(6):
            p_xi_given_d = leaf[i, 0, flat[b, i]]  # (M,)
            per_z = per_z * (a_zid[i] @ p_xi_given_d)
        expected[b] = a_yz @ per_z
    assert torch.allclose(model(x).exp(), expected, rtol=1e-10)


def test_ht_pool_schedules():
    image = HTConvAC((1, 8, 6), Categorical(2), 2, 3)
    assert image.grids == [(8, 6), (4, 3), (2, 2), (1, 1)]
    sequence = HTConvAC((1, 1, 9), Bernoulli(), 2, [2, 3, 4, 5])
    assert sequence.grids == [(1, 9), (1, 5), (1, 3), (1, 2), (1, 1)]
    patches = HTConvAC((3, 7, 7), Gaussian(), 2, 2, patch_size=4, pool=(2, 2))
    assert patches.grids == [(2, 2), (1, 1)] and patches.leaves.num_vars == 48
    assert CPConvAC((1, 4, 4), Categorical(3), 2, 3).grids == [(4, 4), (1, 1)]
    with pytest.raises(ValueError, match="ends on grid"):
        HTConvAC((1, 4, 4), Categorical(2), 2, 2, pool=[(2, 2)])
    with pytest.raises(ValueError, match="channels has 1 entries"):
        HTConvAC((1, 4, 4), Categorical(2), 2, [2])


def test_reset_logits_draws_every_logit_with_the_given_spread():
    model = HTConvAC((1, 4, 4), Categorical(5), 3, 4, num_classes=2)
    model.reset_logits(4.0, generator=torch.Generator().manual_seed(0))
    logits = torch.cat([p.flatten() for name, p in model.named_parameters() if name.endswith("logits")])
    assert logits.std().item() == pytest.approx(4.0, rel=0.1) and logits.numel() == sum(
        p.numel() for p in (model.leaves.logits, model.root.logits, *[s.logits for s in model.sums]))
    x = all_inputs((1, 2, 2), 2)
    small = HTConvAC((1, 2, 2), Bernoulli(), 2, 2)
    small.reset_logits(5.0)
    assert torch.logsumexp(small.log_prob(x), 0).abs().item() < 1e-5  # still normalized
    with pytest.raises(ValueError, match="std"):
        model.reset_logits(0.0)


def test_channel_growth_widens_the_upper_layers():
    tree = HTConvAC((1, 1, 69), Bernoulli(), 4, 16, structure="learned", channel_growth=2, max_channels=100)
    assert tree.channels == [4, 16, 32, 64, 100, 100, 100, 100]  # 7 fusion layers over 69 positions
    assert HTConvAC((1, 8, 8), Bernoulli(), 4, 6, channel_growth=1.5).channels == [4, 6, 9, 14]
    with pytest.raises(ValueError, match="channel_growth must be >= 1"):
        HTConvAC((1, 4, 4), Categorical(2), 2, 2, channel_growth=0.5)
    with pytest.raises(ValueError, match="with a list"):
        HTConvAC((1, 4, 4), Categorical(2), 2, [2, 2], max_channels=4)


GOOD = dict(in_shape=(1, 4, 4), leaf=Categorical(3), num_components=2)


@pytest.mark.parametrize("cls,kwargs,message", [
    (HTConvAC, dict(GOOD, channels=2, in_shape=(1, 4)), r"in_shape must be 3 positive integers, got \(1, 4\)"),
    (HTConvAC, dict(GOOD, channels=2, in_shape=(1, 4.5, 4)), r"in_shape must be 3 positive integers, got \(1, 4.5, 4\)"),
    (HTConvAC, dict(GOOD, channels=2, in_shape=(1, 0, 4)), r"in_shape must be 3 positive integers"),
    (HTConvAC, dict(GOOD, channels=2, num_components=0), r"num_components must be a positive integer, got 0"),
    (HTConvAC, dict(GOOD, channels=2, num_components=2.5), r"num_components must be a positive integer, got 2.5"),
    (HTConvAC, dict(GOOD, channels=0), r"channels must be a positive integer, got 0"),
    (HTConvAC, dict(GOOD, channels=[2, -1]), r"channels must be a list of positive integers, got \[2, -1\]"),
    (HTConvAC, dict(GOOD, channels=2, pool=0), r"pool must be an int or an \(h, w\) pair of positive integers, got 0"),
    (HTConvAC, dict(GOOD, channels=2, pool=[(2, 2), (2, 0)]), r"a pooling window must be .* got \(2, 0\)"),
    (HTConvAC, dict(GOOD, channels=2, patch_size=0), r"patch_size must be a positive integer, got 0"),
    (HTConvAC, dict(GOOD, channels=2, num_classes=0), r"num_classes must be a positive integer, got 0"),
    (HTConvAC, dict(GOOD, channels=2, share_leaves="no"), r"share_leaves must be True or False, got 'no'"),
    (HTConvAC, dict(GOOD, channels=2, share_weights=1), r"share_weights must be True or False, got 1"),
    (HTConvAC, dict(GOOD, channels=2, class_prior="flat"), r"class_prior must be 'uniform' or 'learned', got 'flat'"),
    (HTConvAC, dict(GOOD, channels=2, leaf={"name": "gaussian", "min_std": 0}), r"Gaussian min_std must be a finite number > 0, got 0"),
    (CPConvAC, dict(GOOD, rank=0), r"rank must be a positive integer, got 0"),
    (CPConvAC, dict(GOOD, rank=True), r"rank must be a positive integer, got True"),
])
def test_invalid_constructor_arguments_raise_one_line_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        cls(**kwargs)
    assert "\n" not in str(error.value)


def test_gaussian_model_density_and_samples():
    torch.manual_seed(0)
    model = HTConvAC((2, 3, 3), Gaussian(min_std=0.05), 3, 2, patch_size=2).double()
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.float64 and torch.isfinite(model.log_prob(samples)).all()
    # a 1-variable Gaussian model integrates to one (trapezoid rule on a fine grid)
    one = HTConvAC((1, 1, 1), Gaussian(min_std=0.05), 3, 2).double()
    grid = torch.linspace(-6, 7, 20001, dtype=torch.float64)
    density = one.log_prob(grid.view(-1, 1, 1, 1)).exp()
    assert abs(torch.trapezoid(density, grid).item() - 1) < 1e-6


def test_float32_matches_float64():
    model = build(*TINY[1])
    x = all_inputs(model.in_shape, 2)
    assert torch.allclose(model.float().log_prob(x).double(), model.double().log_prob(x), atol=1e-5)


@pytest.mark.parametrize(
    "make_input,message",
    [
        (lambda: torch.zeros(1, 4, dtype=torch.long), r"expected input of shape \(B, 1, 2, 4\), got \(1, 4\)"),
        (lambda: torch.zeros(1, 1, 2, 3, dtype=torch.long), r"got \(1, 1, 2, 3\)"),
        (lambda: torch.full((1, 1, 2, 4), 2), r"values in \[0, 1\], got values in \[2, 2\]"),
        (lambda: torch.full((1, 1, 2, 4), -1), r"got values in \[-1, -1\]"),
        (lambda: torch.full((1, 1, 2, 4), 0.5), "integer values"),
        (lambda: [[0, 1], [1, 0]], "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_value_errors(make_input, message):
    model = build(*TINY[1])
    with pytest.raises(ValueError, match=message):
        model.log_prob(make_input())


def test_bad_masks_and_labels_raise_value_errors():
    model = build(*TINY[1])
    x = torch.zeros(2, 1, 2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"bool mask of the input's shape \(2, 1, 2, 4\), got \(2, 1, 2\)"):
        model.log_prob(x, torch.zeros(2, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]"):
        model.sample(3, y=2)
    gaussian = HTConvAC((1, 2, 4), Gaussian(), 2, 2)
    with pytest.raises(ValueError, match="floating point"):
        gaussian.log_prob(x)
    with pytest.raises(ValueError, match="finite"):
        gaussian.log_prob(torch.full((1, 1, 2, 4), float("inf")))
    with pytest.raises(ValueError, match="unknown leaf family"):
        HTConvAC((1, 2, 2), {"name": "poisson"}, 2, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("cls,kwargs", TINY[:2] + TINY[5:6], ids=IDS[:2] + IDS[5:6])
def test_cuda_matches_cpu(cls, kwargs):
    model = build(cls, kwargs)
    x = all_inputs(model.in_shape, num_values(model))
    cpu = model.log_prob(x)
    gpu_model = model.cuda()
    assert torch.allclose(gpu_model.log_prob(x.cuda()).cpu(), cpu, atol=1e-8)
    samples = gpu_model.sample(64, generator=torch.Generator(device="cuda").manual_seed(0))
    assert samples.is_cuda and torch.isfinite(gpu_model.log_prob(samples)).all()
    assert torch.allclose(gpu_model.float().log_prob(x.cuda()).double().cpu(), cpu, atol=1e-4)


# ---------------------------------------------------------------- the hot path
def test_value_checks_follow_validate_args(monkeypatch):
    """Public calls check the input values by default (one-line errors); ``validation(False)``
    (and ``validate_args = False``) skips the checks, each a host read, and gives the same values."""
    model = build(*TINY[1])
    x = all_inputs(model.in_shape, 2)
    reference = model.log_prob(x)
    with pytest.raises(ValueError, match="values in"):
        model.log_prob(torch.full((1, 1, 2, 4), 2))
    calls = []
    monkeypatch.setattr(model.leaves, "check_values", lambda *args: calls.append(args))
    with model.validation(False):
        assert not model.validate_args and torch.equal(model.log_prob(x), reference)
    assert not calls and model.validate_args  # restored after the block
    model.log_prob(x)
    assert len(calls) == 1


def test_no_mask_work_when_nothing_can_be_missing(monkeypatch):
    """The leaf layer gets ``missing=None`` for integer inputs without a mask on a grid the
    patches tile; a NaN-marked float input and a padded grid still get their masks."""
    seen = []

    def spy(layer):
        forward = layer.forward
        monkeypatch.setattr(layer, "forward", lambda x, missing, maximized=None: seen.append(missing) or forward(x, missing, maximized))

    model = build(*TINY[1])
    spy(model.leaves)
    model.log_prob(torch.zeros(3, 1, 2, 4, dtype=torch.long))
    assert seen[-1] is None
    padded = build(*TINY[4])  # 1x3 grid of 2x2 patches: the last column pads
    spy(padded.leaves)
    padded.log_prob(torch.zeros(3, 2, 1, 3, dtype=torch.long))
    assert seen[-1] is not None and seen[-1].any()
    gaussian = HTConvAC((1, 2, 2), Gaussian(), 2, 2)
    spy(gaussian.leaves)
    x = torch.randn(2, 1, 2, 2)
    x[0, 0, 0, 0] = math.nan
    assert torch.isfinite(gaussian.log_prob(x)).all() and seen[-1].sum() == 1


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "with-exact-positions"])
@pytest.mark.parametrize("leaf,x", [(Categorical(5), torch.randint(0, 5, (4, 1, 4, 4))), (Gaussian(), torch.randn(4, 1, 4, 4))])
def test_a_training_step_reads_nothing_back_but_the_exact_positions(monkeypatch, leaf, x, exact):
    """Forward, backward and optimizer steps of a model on the ``meta`` device (which has no data:
    any host read of a value raises there, as it would synchronize a GPU), with the value checks
    off. The only host read is the exact-position plan, once per step for all sum layers
    (:func:`convac.layers.refresh_exact_positions`), replaced here by one that reads nothing; a
    plan with exact positions is made and used without any other read."""
    import convac.model

    refreshes = []

    def plan_without_reading(layers):
        layers = list(layers)
        refreshes.append(sum(not layer._plan_is_current() for layer in layers))
        for layer in layers:  # what the read would find: no exact position, or the first one exact
            on_host = torch.zeros(1 if layer.shared else layer.num_positions, dtype=torch.bool)
            on_host[0] = exact and len(on_host) > 1
            layer._set_plan(on_host.to("meta"), int((~on_host).sum()))

    monkeypatch.setattr(convac.model, "refresh_exact_positions", plan_without_reading)
    model = HTConvAC((1, 4, 4), leaf, 3, 3).to("meta")
    model.validate_args = False
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        (-model.log_prob(x.to("meta")).mean()).backward()
        optimizer.step()
    assert refreshes == [model.num_levels + 1] * 3  # every step: all sum layers stale, one plan for all
    model.validate_args = True
    with pytest.raises(RuntimeError, match="meta"):  # the value checks do read values back
        model.log_prob(x.to("meta"))
