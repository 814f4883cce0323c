"""Ensembles of repetitions: each group of a mixture's repetitions fitted to the data on its own.

A mixture of ``R`` trees under one root sum (``model.num_repetitions``) is fitted jointly by
default: maximizing ``log P(x) = log sum_r P(x, r)`` lets the repetitions share the data out
between them (the root's latent ``r`` is inferred per example). An ensemble of ``G`` members
splits the ``R`` repetitions into ``G`` groups of ``R / G`` consecutive ones (member ``g`` holds
repetitions ``g R/G .. (g+1) R/G - 1``) and fits every member to all of the data on its own:

    maximize  (1/G) sum_g log P_g(x, y),   P_g(x, y) = P(y) * G * sum_{r in g} P(x, r | y).

``G * sum_{r in g} P(x, r | y)`` is member ``g``'s own normalized model exactly when the members'
root weights are equal (``1/G`` each), and ``sum_g log`` of those weights is largest there: EM
sets them to ``1/G`` with its first M-step (every member's root counts add up to the same total),
a gradient optimizer approaches it as it converges; the objective is then the members' mean
log-likelihood. The trained model is the uniform mixture ``(1/G) sum_g P_g``: an ensemble of
density estimators (Smyth & Wolpert, "Linearly combining density estimators via stacking",
Machine Learning 36, 1999; bagging, Breiman, Machine Learning 24, 1996, here with every member's
parameters fitted to all of the data and its trees learned from a bootstrap sample,
:func:`convac.structure.learn_structure`). By Jensen's inequality its log-likelihood of any data
is at least the members' mean; members with other trees and initial weights err differently, and
the ensemble gains on held-out data (measured in the README's density table).

EM needs nothing new: the gradient and flows of this objective are each member's own expected
counts (``convac.training.em``) divided by ``G``; an EM whose ``dataset_size`` is ``G * N``
(``ConvACModule`` sets it) scales them back, so that every member, pseudocount included, takes
the step it would take alone (and the root gives each member's block the counts of ``N``
examples, with ``pseudocount / G`` of the root's shared by that block's entries).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from convac.model import ConvAC


def ensemble_log_joint(model: ConvAC, x: Tensor, members: int) -> tuple[Tensor, Tensor]:
    """``x`` (B, C, H, W) -> ``(log P(x, y), (1/G) sum_g log P_g(x, y))``, each (B, num_classes)
    in nats, from one pass (:meth:`ConvAC.repetition_log_probs`); the second is the ensemble's
    objective (module docstring). ``members = 1`` gives the joint mixture's ``log P(x, y)`` twice."""
    per_repetition = model.repetition_log_probs(x)  # (B, num_classes, R): log P(x, r | y)
    per_member = torch.logsumexp(per_repetition.unflatten(-1, (members, -1)), dim=-1)  # (B, num_classes, G)
    prior = model.log_class_prior()
    return torch.logsumexp(per_member, dim=-1) + prior, per_member.mean(-1) + math.log(members) + prior
