"""The DEBD recipe's rule for the size of the training set: EM's step size, the ensemble's size
and early stopping's patience.

A set of a few hundred or thousand rows leaves the recipe's model (widening to 128 channels)
with a large gap between training and validation likelihood. Three settings, each set from the
number of training examples ``N`` alone (not from the data set's name or its validation score),
narrow it; ``docs/results/density.md`` ("Small training sets") has the measurements behind them.

* **Online EM's step size** ``s`` (the ``module.lr`` of :class:`convac.training.em.EM`). The
  running counts forget geometrically, so they average about the last ``B / s`` examples
  (``B`` the batch size). Stochastic EM, like SGD, is regularized by the noise of that average
  (Cappe & Moulines, JRSS-B 2009, study its convergence; the annealed step, here a cosine
  schedule to 0, averages the noise away at the end). On a large set the recipe's step 0.2
  averages the last 500 rows, a few percent of an epoch; on 1,600 rows the same step averages a
  third of the data, and the parameters settle on the training set early. The rule keeps the
  average to at most a 20th of the training set, ``s = 20 B / N``, between the full-data step
  0.2 (``N >= 10,000`` at ``B = 100``: the large sets keep the recipe they were measured with)
  and 1 (each step the batch's own counts, at ``N <= 2,000``).
* **Ensemble members** ``G`` (``module.ensemble_members``, one tree each,
  :mod:`convac.training.ensemble`). The members' errors on held-out rows differ, and their
  uniform mixture averages the variance of small-data fits away; an epoch costs ``G N``
  member-rows. The rule gives an epoch about the cost of 4 members on 12,500 rows: ``G`` the
  power of two nearest to ``50,000 / N`` (in log scale, so within a factor ``sqrt 2``), between the
  recipe's 4 and 32.
* **Early stopping's patience** follows the step (:func:`early_stopping_patience`): the
  validation NLL of a run at step ``s`` moves between epochs with the last ``B / s`` rows, so a
  plateau at step 0.2 shows in 5 epochs without a better score and at step ``s`` in about
  ``5 s / 0.2``. At step 1 with 16 members, patience 5 stopped nltcs at 1,600 rows after 13 of 30
  epochs, before the schedule had annealed the step (test 6.111 nats; 6.057 with the whole
  schedule).

The configs call these through OmegaConf resolvers (:func:`register_resolvers`):
``module.lr: ${convac.em_step:${data.train_size},${data.batch_size}}``,
``module.ensemble_members: ${convac.ensemble_members:${data.train_size}}`` and
``callbacks.early_stopping.patience: ${convac.early_stopping_patience:${module.lr}}``; ``data.train_size``
is read from the data (after ``data.max_train_rows``) before the model is built. A number in
their place (``module.lr=0.2``) overrides the rule.
"""
from __future__ import annotations

import math

from omegaconf import OmegaConf

from convac.errors import InvalidValueError

LARGE_SET_STEP = 0.2  # the recipe's step measured on the full DEBD sets (12,262 rows and more)
STEP_FRACTION = 20  # the running counts average at most N / STEP_FRACTION examples
MEMBER_ROWS = 50_000  # G N: an epoch's member-rows (4 members on 12,500 rows)
MIN_MEMBERS, MAX_MEMBERS = 4, 32
LARGE_SET_PATIENCE = 5  # epochs without a better val/nll at the large-set step


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidValueError(f"{name} must be a positive number of examples, got {value!r}")


def em_step(train_size: int | None, batch_size: int) -> float:
    """Online EM's step size for ``train_size`` training examples in batches of ``batch_size``:
    ``clamp(STEP_FRACTION * batch_size / train_size, LARGE_SET_STEP, 1)`` (module docstring).
    ``train_size`` None (the config checked before the data is read) gives the large-set step.
    Raises :class:`InvalidValueError` for a size or batch size that is not a positive int."""
    _check_size("data.train_size", train_size)
    _check_size("data.batch_size", batch_size)
    if train_size is None:
        return LARGE_SET_STEP
    return min(1.0, max(LARGE_SET_STEP, STEP_FRACTION * batch_size / train_size))


def ensemble_members(train_size: int | None) -> int:
    """The number of ensemble members for ``train_size`` training examples: the power of two
    nearest to ``MEMBER_ROWS / train_size`` in log scale (``2^k`` for a ratio in
    ``[2^(k - 1/2), 2^(k + 1/2))``), clamped to ``[MIN_MEMBERS, MAX_MEMBERS]`` (module docstring).
    ``train_size`` None (before the data is read) gives ``MIN_MEMBERS``."""
    _check_size("data.train_size", train_size)
    if train_size is None:
        return MIN_MEMBERS
    members = 1 << max(0, math.floor(math.log2(MEMBER_ROWS / train_size) + 0.5))
    return min(MAX_MEMBERS, max(MIN_MEMBERS, members))


def early_stopping_patience(step: float) -> int:
    """Epochs without a better validation score before early stopping, for EM step ``step``:
    ``ceil(LARGE_SET_PATIENCE * step / LARGE_SET_STEP)``, at least 1 (module docstring).
    Raises :class:`InvalidValueError` unless ``0 < step <= 1``."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise InvalidValueError(f"module.lr (the EM step) must be in (0, 1], got {step!r}")
    return max(1, math.ceil(LARGE_SET_PATIENCE * step / LARGE_SET_STEP - 1e-9))


def register_resolvers() -> None:
    """Register ``${convac.em_step:N,B}``, ``${convac.ensemble_members:N}`` and
    ``${convac.early_stopping_patience:STEP}`` (idempotent)."""
    for name, rule in (("convac.em_step", em_step), ("convac.ensemble_members", ensemble_members),
                       ("convac.early_stopping_patience", early_stopping_patience)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, rule)
