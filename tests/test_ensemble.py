"""Ensembles of repetitions (convac.training.ensemble): the objective against the members built as
models of their own, and one EM step of an ensemble against the members' own EM steps."""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from convac import Bernoulli, ConvACModule, HTConvAC
from convac.data import create_datamodule
from convac.training.em import EM
from convac.training.ensemble import check_members, ensemble_log_joint

D, R = 6, 4


def build(seed=0):
    torch.manual_seed(seed)
    model = HTConvAC((1, 1, D), Bernoulli(), num_components=3, channels=[4, 3, 2], structure="learned",
                     num_repetitions=R).double()
    model.reset_logits(1.5)
    model.set_order(torch.stack([torch.randperm(D) for _ in range(R)]))
    return model


def repetition_model(model, r):
    """Repetition ``r`` of ``model`` as a model of its own (R = 1): its order, leaves, sums and
    block of root weights (renormalized by the softmax)."""
    single = HTConvAC((1, 1, D), Bernoulli(), num_components=3, channels=[4, 3, 2], structure="learned").double()
    single.set_order(model.order[r:r + 1])
    k = model.channels[-1]
    with torch.no_grad():
        single.leaves.logits.copy_(model.leaves.logits.view(R, D, *model.leaves.logits.shape[1:])[r])
        for mine, theirs in zip(single.sums, model.sums):
            mine.logits.copy_(theirs.logits[r:r + 1])
        single.root.logits.copy_(model.root.logits[:, r * k:(r + 1) * k])
    return single


def data(n=50, seed=1):
    return torch.randint(0, 2, (n, 1, 1, D), generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("members", [1, 2, 4])
def test_the_objective_is_the_members_mean_log_likelihood(members):
    model, x = build(), data()
    with torch.no_grad():  # equal member weights (the optimum of the root's share, set by EM's first step)
        k = model.channels[-1]
        blocks = model.root.logits.view(members, -1)
        model.root.logits.copy_((blocks - torch.logsumexp(blocks, 1, keepdim=True)).view(1, R * k))
    log_joint, fitted = ensemble_log_joint(model, x, members)
    torch.testing.assert_close(log_joint, model.log_joint(x))
    per_repetition = torch.stack([repetition_model(model, r).log_prob(x) for r in range(R)], 1)  # (B, R): log P_r(x)
    share = model.root.weights()[0, 0].view(R, -1).sum(1)  # (R,): P(r), the root's weight on each repetition
    joint = (per_repetition + share.log()).view(-1, members, R // members)  # log P(x, r), grouped by member
    per_member = torch.logsumexp(joint, -1) + math.log(members)  # log P_g(x): member g's own normalized mixture
    torch.testing.assert_close(fitted[:, 0], per_member.mean(1))
    assert (fitted[:, 0] <= log_joint[:, 0] + 1e-12).all()  # Jensen: the ensemble beats the members' mean


def test_an_em_step_of_independent_members_is_each_members_own_step():
    model, x = build(seed=2), data(seed=3)
    singles = [repetition_model(model, r) for r in range(R)]
    optimizer = EM(model, lr=1.0, pseudocount=0.0)
    (-ensemble_log_joint(model, x, R)[1].sum()).backward()
    optimizer.accumulate()
    optimizer.step()
    for single in singles:
        own = EM(single, lr=1.0, pseudocount=0.0)
        (-single.log_prob(x).sum()).backward()
        own.accumulate()
        own.step()
    k = model.channels[-1]
    root = model.root.weights()[0, 0].view(R, k)
    torch.testing.assert_close(root.sum(1), torch.full((R,), 1.0 / R, dtype=torch.float64))  # equal members
    for r, single in enumerate(singles):
        torch.testing.assert_close(root[r] * R, single.root.weights()[0, 0])
        for mine, theirs in zip(model.sums, single.sums):
            torch.testing.assert_close(mine.weights()[r * mine.weights().shape[0] // R:][:theirs.weights().shape[0]],
                                       theirs.weights())
        leaves = model.leaves.log_probabilities().view(R, D, *single.leaves.log_probabilities().shape[1:])[r]
        torch.testing.assert_close(leaves, single.leaves.log_probabilities())


def test_members_must_split_the_repetitions_evenly():
    assert check_members(2, 4) == 2
    with pytest.raises(ValueError, match="ensemble_members must divide num_repetitions.*3 members for 4"):
        check_members(3, 4)
    with pytest.raises(ValueError, match="ensemble_members must be a positive integer"):
        check_members(0, 4)
    kwargs = dict(in_shape=[1, 1, D], leaf={"name": "bernoulli"}, num_components=3, channels=4,
                  structure="learned", num_repetitions=4)
    with pytest.raises(ValueError, match="ensemble_members must divide"):
        ConvACModule("ht", kwargs, ensemble_members=3)
    with pytest.raises(ValueError, match="needs objective=generative"):
        ConvACModule("ht", {**kwargs, "num_classes": 2}, objective="discriminative", ensemble_members=2)


def test_an_em_trained_ensemble_logs_its_nll_below_the_members_mean(tmp_path):
    """After EM's first step the members weigh 1/G each, so the ensemble's val/nll is at most
    val/loss, the members' mean NLL (Jensen), and the joint query API sees one model."""
    x = data(n=120, seed=4).long().view(120, D).numpy()
    np.savez(tmp_path / "table.npz", x_train=x[:80], x_val=x[80:100], x_test=x[100:])
    dm = create_datamodule("array", path=str(tmp_path / "table.npz"), batch_size=20)
    kwargs = dict(in_shape=[1, 1, D], leaf={"name": "bernoulli"}, num_components=3, channels=4,
                  structure="learned", num_repetitions=4)
    module = ConvACModule("ht", kwargs, optimizer="em", lr=0.5, ensemble_members=2,
                          structure_learning={"trees": ["chow_liu", "matching"]})
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/nll"] <= metrics["val/loss"] + 1e-5
    root = module.model.root.weights()[0, 0].view(2, -1).sum(1)
    torch.testing.assert_close(root, torch.full((2,), 0.5), atol=1e-5, rtol=0)
