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
from convac.training.ensemble import ensemble_log_joint
from convac.validation import check_members

D, R = 6, 4


def build(seed=0, num_classes=1):
    torch.manual_seed(seed)
    model = HTConvAC((1, 1, D), Bernoulli(), num_components=3, channels=[4, 3, 2], structure="learned",
                     num_repetitions=R, num_classes=num_classes).double()
    model.reset_logits(1.5)
    model.set_order(torch.stack([torch.randperm(D) for _ in range(R)]))
    return model


def member_model(model, first, count):
    """Repetitions ``first .. first + count - 1`` of ``model`` as a model of their own: their
    orders, leaves, sums and blocks of root weights (renormalized by the softmax)."""
    part = HTConvAC((1, 1, D), Bernoulli(), num_components=3, channels=[4, 3, 2], structure="learned",
                    num_repetitions=count, num_classes=model.num_classes).double()
    part.set_order(model.order[first:first + count])
    k = model.channels[-1]
    with torch.no_grad():
        leaves = model.leaves.logits.view(R, D, *model.leaves.logits.shape[1:])[first:first + count]
        part.leaves.logits.copy_(leaves.reshape(part.leaves.logits.shape))
        for mine, theirs in zip(part.sums, model.sums):
            mine.logits.copy_(theirs.logits[first:first + count])
        part.root.logits.copy_(model.root.logits[:, first * k:(first + count) * k])
    return part


def data(n=50, seed=1):
    return torch.randint(0, 2, (n, 1, 1, D), generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("members", [1, 2, 4])
def test_the_objective_is_the_members_mean_log_likelihood(members, num_classes):
    model, x = build(num_classes=num_classes), data()
    k = model.channels[-1]
    with torch.no_grad():  # equal member weights for every class (EM's first step sets them)
        blocks = model.root.logits.view(num_classes, members, -1)
        model.root.logits.copy_((blocks - torch.logsumexp(blocks, -1, keepdim=True)).view(num_classes, R * k))
    log_joint, fitted = ensemble_log_joint(model, x, members)
    torch.testing.assert_close(log_joint, model.log_joint(x))
    per_repetition = torch.stack([member_model(model, r, 1)(x) for r in range(R)], -1)  # (B, classes, R): log P_r(x | y)
    share = model.root.weights()[0].view(num_classes, R, k).sum(-1)  # (classes, R): P(r | y)
    joint = (per_repetition + share.log()).unflatten(-1, (members, -1))  # log P(x, r | y), grouped by member
    per_member = torch.logsumexp(joint, -1) + math.log(members)  # log P_g(x | y): member g's own mixture
    torch.testing.assert_close(fitted, per_member.mean(-1) + model.log_class_prior())
    assert (fitted <= log_joint + 1e-12).all()  # Jensen: the ensemble beats the members' mean


def em_steps(model, batches, members, lr, pseudocount, dataset_size):
    optimizer = EM(model, lr=lr, pseudocount=pseudocount, dataset_size=dataset_size)
    for batch in batches:
        (-ensemble_log_joint(model, batch, members)[1].sum()).backward()
        optimizer.accumulate()
        optimizer.step()
        optimizer.zero_grad()
    optimizer.remove_hooks()


@pytest.mark.parametrize("members, lr, pseudocount, batches", [(4, 1.0, 0.0, 1), (2, 0.4, 0.0, 3), (2, 0.4, 0.3, 1)],
                         ids=["full-batch, one tree each", "online, two trees each", "with a pseudocount"])
def test_em_steps_of_an_ensemble_are_each_members_own_steps(members, lr, pseudocount, batches):
    """Counting the training set G times (the module's dataset_size) gives every member the
    steps it takes alone, its pseudocount included; the members' root shares become 1/G. (The
    root's own pseudocount is shared by its R * K_L entries, so with one the members' roots, and
    through them the next steps' flows, differ slightly from a member's alone: one step here.)"""
    model, x = build(seed=2), data(n=60, seed=3)
    size = R // members
    alone = [member_model(model, g * size, size) for g in range(members)]
    split = list(x.chunk(batches))
    em_steps(model, split, members, lr, pseudocount, dataset_size=members * len(x))
    for part in alone:
        em_steps(part, split, 1, lr, pseudocount, dataset_size=len(x))
    k = model.channels[-1]
    root = model.root.weights()[0, 0].view(members, size * k)
    torch.testing.assert_close(root.sum(1), torch.full((members,), 1.0 / members, dtype=torch.float64))
    for g, part in enumerate(alone):
        mine = member_model(model, g * size, size)
        for a, b in zip(mine.sums, part.sums):
            torch.testing.assert_close(a.weights(), b.weights())
        torch.testing.assert_close(mine.leaves.log_probabilities(), part.leaves.log_probabilities())
        if pseudocount == 0:  # the root's pseudocount is shared by all R * K_L entries, not a member's
            torch.testing.assert_close(mine.root.weights(), part.root.weights())


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


def test_an_em_trained_ensemble_logs_the_members_mean_as_its_loss(tmp_path):
    """``val/loss`` is the members' mean NLL and ``val/nll`` the ensemble's, each recomputed here
    from the trained model; after EM's first step the members weigh 1/G each."""
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
    assert trainer.optimizers[0].dataset_size == 2 * 80  # each member's counts those of the 80 rows
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    model, x_val = module.model, torch.from_numpy(x[80:100]).view(20, 1, 1, D)
    with torch.no_grad():
        per_member = torch.logsumexp(model.repetition_log_probs(x_val)[:, 0].view(20, 2, 2), -1) + math.log(2)
        assert metrics["val/loss"] == pytest.approx(-per_member.mean().item(), abs=1e-4)
        assert metrics["val/nll"] == pytest.approx(-model.log_prob(x_val).mean().item(), abs=1e-4)
    assert metrics["val/nll"] < metrics["val/loss"]  # two different members: the ensemble gains
    root = model.root.weights()[0, 0].view(2, -1).sum(1)
    torch.testing.assert_close(root, torch.full((2,), 0.5), atol=1e-5, rtol=0)
