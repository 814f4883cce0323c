"""Leaf families: specs, closed-form entropies, sampling."""
from __future__ import annotations

import math
import re

import pytest
import torch

from convac import leaves
from convac.leaves import Bernoulli, Categorical, Gaussian, make_leaf


def test_make_leaf_accepts_specs_names_and_mappings():
    assert make_leaf("bernoulli") == Bernoulli()
    assert make_leaf({"name": "categorical", "num_values": 5}) == Categorical(5)
    assert make_leaf(Gaussian(0.1)) == Gaussian(0.1)
    assert make_leaf(Categorical(7).to_dict()) == Categorical(7)
    with pytest.raises(ValueError, match="bad arguments for leaf 'categorical'"):
        make_leaf({"name": "categorical", "num_vals": 5})
    with pytest.raises(ValueError, match="Categorical num_values must be an integer >= 2, got 1"):
        Categorical(1)


@pytest.mark.parametrize("make,message", [
    (lambda: Gaussian(min_std=0), "Gaussian min_std must be a finite number > 0, got 0"),
    (lambda: Gaussian(min_std=-0.5), "Gaussian min_std must be a finite number > 0, got -0.5"),
    (lambda: Gaussian(min_std=math.nan), "got nan"),
    (lambda: Gaussian(min_std=math.inf), "got inf"),
    (lambda: Gaussian(min_std="0.1"), "got '0.1'"),
    (lambda: Categorical(2.5), "Categorical num_values must be an integer >= 2, got 2.5"),
    (lambda: Categorical(True), "got True"),
    (lambda: Bernoulli(num_values=3), "Bernoulli has exactly 2 values, got num_values=3"),
    (lambda: Categorical(3).make_layer(0, 1, 2, False), "num_positions must be a positive integer, got 0"),
    (lambda: Categorical(3).make_layer(4, 1, 0, False), "num_components must be a positive integer, got 0"),
    (lambda: Gaussian().make_layer(4, 1, 2, "yes"), "shared must be True or False, got 'yes'"),
    (lambda: Gaussian().make_layer(4, 1, 2, False).__class__(4, 1, 2, False, min_std=0.0), "min_std must be a finite number > 0, got 0.0"),
])
def test_invalid_leaf_arguments_raise_one_line_errors(make, message):
    """Bad leaf arguments raise one-line ValueErrors; ``Gaussian(min_std=0)`` or ``(min_std=-0.5)``
    would give NaN log-likelihoods."""
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_leaf_mode_log_probabilities():
    """``max_x log f(x)``: the largest categorical log-probability; the Gaussian log-density at its mean."""
    layer = Categorical(4).make_layer(3, 2, 5, shared=False).double()
    assert torch.allclose(layer.mode_log_prob_per_variable(), layer.log_probabilities().max(2).values)
    gaussian = Gaussian(min_std=0.1).make_layer(3, 2, 5, shared=False).double()
    mode = gaussian.mode_log_prob_per_variable()  # (P, V, M)
    observed = torch.zeros(3, 1, 2, dtype=torch.bool)
    for m in range(5):
        at_mean = gaussian.mean.detach()[:, :, m].unsqueeze(1)  # (P, 1, V): component m's means
        assert torch.allclose(gaussian.log_prob_per_variable(at_mean, observed)[:, 0, :, m], mode[:, :, m])
        assert (gaussian.log_prob_per_variable(at_mean + 0.01, observed)[:, 0, :, m] < mode[:, :, m]).all()


def test_categorical_entropy_is_closed_form():
    layer = Categorical(4).make_layer(num_positions=3, num_vars=2, num_components=5, shared=False).double()
    p = layer.log_probabilities().exp()  # (P, V, 4, M)
    expected = -(p * p.log()).sum(2).sum(1)
    assert torch.allclose(layer.entropy(), expected)
    shared = Categorical(4).make_layer(num_positions=3, num_vars=2, num_components=5, shared=True)
    assert shared.entropy().shape == (3, 5) and torch.allclose(shared.entropy()[0], shared.entropy()[2])


def test_gaussian_entropy_and_std_floor():
    layer = Gaussian(min_std=0.5).make_layer(2, 3, 4, shared=False).double()
    with torch.no_grad():
        layer.raw_std.fill_(-30.0)
    assert torch.allclose(layer.std(), torch.full((2, 3, 4), 0.5, dtype=torch.float64))
    expected = 3 * 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert torch.allclose(layer.entropy(), torch.full((2, 4), expected, dtype=torch.float64))


def test_leaf_samples_match_their_distribution():
    layer = Categorical(3).make_layer(1, 1, 2, shared=False).double()
    components = torch.ones(1, 30000, dtype=torch.long)
    values = layer.sample(components, "sample", torch.Generator().manual_seed(0))
    freq = torch.bincount(values.flatten(), minlength=3).double() / 30000
    probs = layer.log_probabilities().exp()[0, 0, :, 1]
    assert torch.allclose(freq, probs, atol=4 * (0.25 / 30000) ** 0.5)
    mode = layer.sample(components[:, :1], "mpe", None)
    assert mode.item() == probs.argmax().item()


@pytest.mark.parametrize("shared", [False, True])
def test_categorical_log_prob_gradient_matches_autograd(shared):
    """The hand-written backward of the leaf-table look-up equals autograd's through
    ``log_softmax`` and advanced indexing, with missing entries and shared parameters."""
    layer = Categorical(5).make_layer(num_positions=3, num_vars=2, num_components=4, shared=shared).double()
    x = torch.randint(0, 5, (3, 7, 2))
    missing = torch.rand(3, 7, 2) < 0.3
    upstream = torch.randn(3, 7, 4, dtype=torch.float64)
    layer(x, missing).backward(upstream)

    logits = layer.logits.detach().clone().requires_grad_()
    table = torch.log_softmax(logits, 2).expand(3, -1, -1, -1)  # (P, V, 5, M)
    per_var = table[torch.arange(3).view(3, 1, 1), torch.arange(2).view(1, 1, 2), x.masked_fill(missing, 0)]
    per_var.masked_fill(missing.unsqueeze(-1), 0.0).sum(2).backward(upstream)
    assert torch.allclose(layer.logits.grad, logits.grad)


# ---------------------------------------------------------------- sampling from CDF tables
def test_cdf_rows_are_the_normalized_cdf():
    """``cdf_rows`` (no running maximum on CPU) equals ``normalized_cdf`` of the float64 cumulative
    sums: nondecreasing rows ending at exactly 1, also with zero and tiny probabilities."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, 7, generator=g) * 30, -1)
    p[3, 2] = 0.0
    rows = leaves.cdf_rows(p)
    assert rows.dtype == torch.float64 and torch.equal(rows, leaves.normalized_cdf(p.double().cumsum(-1)))
    assert (rows.diff(dim=-1) >= 0).all() and (rows[:, -1] == 1).all()


def test_both_ways_of_drawing_table_rows_draw_the_same_values(monkeypatch):
    """Gathered rows compared with ``u`` (short rows) and one binary search over the whole table
    (long rows) draw the same values from the same uniforms, and never a value of probability 0."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(30, 9, generator=g) * 4, -1)
    p[:, 4] = 0.0  # impossible everywhere
    cdf = leaves.cdf_rows(p)
    rows = torch.randint(0, 30, (40, 50), generator=g)
    gathered = leaves.sample_table_rows(cdf, rows, torch.Generator().manual_seed(1))
    monkeypatch.setattr(leaves, "GATHER_MAX_VALUES", 1)
    searched = leaves.sample_table_rows(cdf, rows, torch.Generator().manual_seed(1))
    assert torch.equal(gathered, searched) and not (gathered == 4).any()
    counts = torch.bincount(gathered[rows == 0], minlength=9).double()
    expected = p[0].double() / p[0].sum() * counts.sum()  # cdf_rows normalizes the rows
    assert ((counts - expected).abs() <= 4 * expected.sqrt() + 1).all()


def test_fixed_weights_normalize_the_categorical_table_once(monkeypatch):
    """In a ``fixed_weights`` block the leaf layer's log-probability table is normalized once for
    every query (likelihoods, entropies, modes) and gives the values of the queries outside it;
    after the block each query normalizes the logits as they are then."""
    from convac import HTConvAC
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = HTConvAC((1, 4, 4), Categorical(5), 3, 2)
    layer = model.leaves
    x = model.sample(8, generator=torch.Generator().manual_seed(0))
    normalizations = []  # for every log_softmax: whether it normalized the leaf logits
    log_softmax = F.log_softmax

    def counted(t, *args, **kwargs):
        normalizations.append(t is layer.logits)
        return log_softmax(t, *args, **kwargs)

    monkeypatch.setattr(F, "log_softmax", counted)

    def queries():
        return [*model.level_log_probs(x), model.leaf_entropy(), layer.mode_log_prob_per_variable(), model.log_prob(x)]

    with torch.no_grad():
        outside = queries()
        assert normalizations.count(True) == 4  # two likelihood passes, the entropy, the mode
        normalizations.clear()
        with model.fixed_weights():
            inside = queries()
            assert layer.log_probabilities() is layer.log_probabilities()
        assert normalizations.count(True) == 1 and layer._normalized is None
        for a, b in zip(inside, outside):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        layer.logits.add_(torch.randn_like(layer.logits))
        torch.testing.assert_close(layer.log_probabilities(), torch.log_softmax(layer.logits, 2))  # fresh after the block
    gaussian = HTConvAC((1, 4, 4), Gaussian(), 3, 2)
    xg = torch.randn(4, 1, 4, 4)
    with torch.no_grad():
        outside = gaussian.log_prob(xg)
        with gaussian.fixed_weights():  # nothing to keep: the same values
            torch.testing.assert_close(gaussian.log_prob(xg), outside, rtol=0, atol=0)
