"""Data softening (Liu & Van den Broeck, NeurIPS 2021): the softened likelihood against its
definition by enumeration, EM's softened update against its closed form, and the module option."""
from __future__ import annotations

import itertools

import pytest
import torch

from convac import Bernoulli, Categorical, ConvACModule, Gaussian
from convac.errors import InvalidValueError
from convac.leaves import softened_log_probabilities
from convac.training.em import EM
from tests.test_em import build, closed_form_counts


def evidence_matrix(num_values: int, flip: float) -> torch.Tensor:
    """``T[x, t]``: the probability that observed value ``x`` came from value ``t``."""
    t = torch.full((num_values, num_values), flip / (num_values - 1), dtype=torch.float64)
    return t.fill_diagonal_(1 - flip)


def all_inputs(num_values: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_values), repeat=4)), dtype=torch.float64).view(-1, 1, 1, 4)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "layer-by-layer"])
@pytest.mark.parametrize("leaf", [Categorical(3), Bernoulli()], ids=["categorical", "bernoulli"])
def test_softened_likelihood_equals_its_definition_by_enumeration(leaf, fold):
    """``P_soft(x) = sum_t prod_v T[x_v, t_v] P(t)`` over every input ``t`` of 4 variables."""
    model = build(leaf)
    model.fold_leaf_sums = fold
    xs = all_inputs(leaf.num_values)
    flip = 0.15
    t = evidence_matrix(leaf.num_values, flip)
    codes = xs.view(-1, 4).long()
    weights = torch.ones(len(xs), len(xs), dtype=torch.float64)  # [x, t] = prod_v T[x_v, t_v]
    for v in range(4):
        weights *= t[codes[:, v]][:, codes[:, v]]
    with torch.no_grad():
        expected = (weights @ model.log_prob(xs).exp()).log()
        with model.leaves.softened(flip):
            softened = model.log_prob(xs)
        exact = model.log_prob(xs)
    torch.testing.assert_close(softened, expected)
    torch.testing.assert_close(torch.logsumexp(softened, 0), torch.zeros((), dtype=torch.float64))  # still normalized
    assert not torch.allclose(softened, exact)  # the block changed the likelihood ...
    torch.testing.assert_close(exact, model.log_prob(xs))  # ... and leaving it restores it


def test_flip_zero_is_the_exact_likelihood_and_the_range_is_checked():
    log_p = torch.log_softmax(torch.randn(2, 3, 4, 5, dtype=torch.float64), dim=2)
    assert softened_log_probabilities(log_p, 0.0) is log_p
    # K = 4, flip 0.6: p' = 0.6 / 3 + (1 - 0.6 * 4 / 3) p
    torch.testing.assert_close(softened_log_probabilities(log_p, 0.6).exp(), 0.2 + 0.2 * log_p.exp())
    for flip in (-0.1, 0.75, 1.0):
        with pytest.raises(InvalidValueError, match=r"flip probability must be in \[0, 0.75\) for 4 values, got"):
            softened_log_probabilities(log_p, flip)
    model = build(Bernoulli())
    with pytest.raises(InvalidValueError, match=r"\[0, 0.5\) for 2 values"):
        with model.leaves.softened(0.5):
            pass
    assert model.leaves.flip == 0.0


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "layer-by-layer"])
def test_em_on_softened_data_equals_the_closed_form(fold):
    """Full-batch EM with softened leaves: the sum weights' counts are those of the circuit whose
    leaves read the soft evidence ``lambda = sum_t T[x, t] f(t)``, and a leaf's count of value
    ``a`` is its component's responsibility times the posterior ``T[x, a] f(a) / lambda``."""
    flip, n = 0.1, 40
    model = build(Categorical(3))
    model.fold_leaf_sums = fold
    x = torch.randint(0, 3, (n, 1, 1, 4), generator=torch.Generator().manual_seed(1))
    codes = x.view(n, 4).t()  # (P, B)
    f = model.leaves.log_probabilities().detach().exp()[:, 0]  # (P, values, M)
    evidence = evidence_matrix(3, flip)[codes]  # (P, B, values): T[x_p, t]
    soft_values = torch.einsum("pbt,ptm->pbm", evidence, f)  # (P, B, M): lambda
    counts = closed_form_counts(model, x, soft_values)
    posterior = torch.einsum("pbt,ptm->pbtm", evidence, f) / soft_values.unsqueeze(2)  # (P, B, values, M)
    leaf_counts = (counts["leaf"].unsqueeze(2) * posterior).sum(1)  # (P, values, M)

    optimizer = EM(model, lr=1.0, pseudocount=0.0)
    with model.leaves.softened(flip):
        (-model.log_prob(x).sum()).backward()
    optimizer.accumulate()
    optimizer.step()
    optimizer.remove_hooks()
    torch.testing.assert_close(model.sums[0].weights(), counts["w1"] / counts["w1"].sum(-1, keepdim=True))
    torch.testing.assert_close(model.sums[1].weights(), counts["w2"] / counts["w2"].sum(-1, keepdim=True))
    torch.testing.assert_close(model.leaves.log_probabilities().exp()[:, 0], leaf_counts / leaf_counts.sum(1, keepdim=True))


def module(**kwargs):
    model_kwargs = dict(in_shape=[1, 1, 4], leaf="bernoulli", num_components=2, channels=[3, 2])
    return ConvACModule("ht", model_kwargs, optimizer="em", **kwargs)


def test_the_module_softens_training_batches_only():
    torch.manual_seed(0)
    lit = module(data_softening=0.2)
    x = torch.randint(0, 2, (16, 1, 1, 4)).float()
    batch = (x, torch.zeros(16, dtype=torch.long))
    with torch.no_grad():
        with lit.model.leaves.softened(0.2):
            softened = -lit.model.log_prob(x).mean()
        exact = -lit.model.log_prob(x).mean()
        torch.testing.assert_close(lit._step(batch, "train"), softened)
        torch.testing.assert_close(lit._step(batch, "val"), exact)
    assert lit.model.leaves.flip == 0.0


def test_the_module_refuses_softening_it_cannot_do():
    with pytest.raises(InvalidValueError, match=r"flip probability must be in \[0, 0.5\) for 2 values, got 0.6"):
        module(data_softening=0.6)
    with pytest.raises(InvalidValueError, match="needs categorical or Bernoulli leaves"):
        ConvACModule("ht", dict(in_shape=[1, 1, 4], leaf=Gaussian().to_dict(), num_components=2, channels=[3, 2]),
                     data_softening=0.1)
