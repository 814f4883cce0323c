"""The measurements of a model card: test metrics, the entropy chain and the fixed check batch.

``scripts/train_zoo.py`` records them when it exports an entry; ``convac-zoo eval`` and the
tests recompute them with these same functions.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from convac.data import ConvACDataModule
from convac.entropy import probe
from convac.model import ConvAC
from convac.zoo.cards import ModelCard, count_parameters

ENTROPY_SAMPLES = 2048
ENTROPY_SEED = 0
CHECK_BATCH = 8
CHECK_SEED = 0


@torch.no_grad()
def test_metrics(model: ConvAC, datamodule: ConvACDataModule, batch_size: int = 1024) -> dict[str, float]:
    """Mean test ``-log P(x)`` in nats (``test/nll``), bits per dimension (``test/bpd`` =
    ``nll / (D ln 2)``) and, for classifiers, the accuracy of ``argmax_y P(y | x)``
    (``test/acc``): the definitions of :class:`convac.ConvACModule`'s test step."""
    model.eval()
    x_all, y_all = datamodule.split("test")
    nll_sum, correct = 0.0, 0
    for x, y in zip(x_all.split(batch_size), y_all.split(batch_size)):
        log_joint = model.log_joint(x)  # (B, K): log P(x, y)
        nll_sum -= float(torch.logsumexp(log_joint, dim=1).double().sum())
        correct += int((log_joint.argmax(1) == y).sum())
    n = len(x_all)
    metrics = {"test/nll": nll_sum / n, "test/bpd": nll_sum / n / (model.num_variables * math.log(2))}
    if model.num_classes > 1:
        metrics["test/acc"] = correct / n
    metrics["num_test"] = n
    return metrics


def entropy_chain(model: ConvAC, bin_width: float | None = None) -> dict[str, Any]:
    """The level entropies ``H^0 <= ... <= H^L <= H(X)`` (nats) of ``model`` and the scaling-law
    summary, from :func:`convac.entropy.probe` with a fixed seed."""
    metrics = probe(model, num_samples=ENTROPY_SAMPLES, seed=ENTROPY_SEED, bin_width=bin_width).metrics()
    return {
        "levels": [metrics[f"entropy/H{level}"] for level in range(model.num_levels + 1)],
        "levels_se": [metrics[f"entropy/H{level}_se"] for level in range(model.num_levels + 1)],
        "H_X": metrics["entropy/H_X"],
        "H_X_se": metrics["entropy/H_X_se"],
        "H_X_bpd": metrics["entropy/H_X_bpd"],
        "C_max": metrics["scaling/C_max"],
        "beta_max": metrics["scaling/beta_max"],
        "num_samples": ENTROPY_SAMPLES,
        "seed": ENTROPY_SEED,
    }


@torch.no_grad()
def check_batch(model: ConvAC) -> dict[str, list]:
    """A fixed batch (``CHECK_BATCH`` exact samples of ``model``, seeded) and its ``log_prob``."""
    model.eval()
    generator = torch.Generator().manual_seed(CHECK_SEED)
    x = model.sample(CHECK_BATCH, generator=generator)
    return {"x": x.tolist(), "log_prob": model.log_prob(x).tolist()}


class Comparison(NamedTuple):
    """One number of a card beside its recomputed value."""

    name: str
    card: float
    measured: float
    ok: bool


def reproduce(card: ModelCard, model: ConvAC, datamodule: ConvACDataModule, rtol: float = 1e-4) -> list[Comparison]:
    """Recompute every number of ``card``'s table row from ``model`` (its verified weights):
    the test metrics (to ``rtol``), the parameter count and file size (exactly), and the
    entropy chain (same seed; within 4 standard errors, so a change of sampler still passes)."""
    measured = test_metrics(model, datamodule)
    rows = [
        Comparison(k, card.metrics[k], measured[k], math.isclose(measured[k], card.metrics[k], rel_tol=rtol, abs_tol=rtol))
        for k in ("test/nll", "test/bpd", "test/acc")
        if k in card.metrics
    ]
    num_parameters = count_parameters(model)
    size = card.weights_path.stat().st_size
    rows += [
        Comparison("parameters", card.num_parameters, num_parameters, num_parameters == card.num_parameters),
        Comparison("size_bytes", card.size_bytes, size, size == card.size_bytes),
    ]
    chain = entropy_chain(model, datamodule.bin_width)
    names = [f"H{level}" for level in range(len(chain["levels"]))] + ["H(X)"]
    recorded = zip(card.entropy["levels"] + [card.entropy["H_X"]], card.entropy["levels_se"] + [card.entropy["H_X_se"]])
    for name, (value, se), now in zip(names, recorded, chain["levels"] + [chain["H_X"]]):
        rows.append(Comparison(name, value, now, abs(now - value) <= 4 * se + rtol * abs(value)))
    return rows
