"""``probe(model)``: measure the information scaling law of a ConvAC (DESIGN section 2)."""
from __future__ import annotations

import math
import time

import torch

from convac.entropy.estimators import (
    SampleStatistics,
    analytic_bounds,
    exact_leaf_entropy,
    mapping_caps,
    node_entropies,
    one_pass_statistics,
)
from convac.entropy.report import EntropyReport, Estimate
from convac.model import ConvAC

DEFAULT_NUM_SAMPLES = 256
DIFFERENTIAL_NOTE = (
    "beta is NaN: Gaussian leaves give differential entropies, whose ratios depend on the unit; "
    "pass bin_width (the quantization step of the data) for discretized entropies"
)


@torch.no_grad()
def probe(
    model: ConvAC,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    bin_width: float | None = None,
    per_node: bool = False,
    batch_size: int = 1024,
) -> EntropyReport:
    """Estimate every level entropy, mapping gap and scaling-law check of ``model``.

    ``H^0`` is exact; ``H^l`` (``l >= 1``) and ``H(X)`` are one-pass Monte Carlo estimates over
    ``num_samples`` exact samples (drawn with a generator seeded by ``seed``, in batches of
    ``batch_size``), with the leaf term as a control variate of known mean ``H^0`` and an
    estimated variance-minimizing coefficient (:meth:`Estimate.controlled`); gaps are
    Rao-Blackwellized and also give the telescoped estimates. For Gaussian leaves ``bin_width`` adds
    ``D * log(1 / bin_width)`` to every level (the discretized entropy); it is ignored for
    discrete leaves.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    if bin_width is not None and bin_width <= 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    device = model.class_logits.device
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        flows = model.latent_marginals()
        chunks = [
            one_pass_statistics(model, flows, min(batch_size, num_samples - done), generator)
            for done in range(0, num_samples, batch_size)
        ]
        stats = SampleStatistics.concatenate(chunks)
        caps, root_cap = mapping_caps(model, flows)
        bounds, h_x_bounds = analytic_bounds(model, flows)
        h0 = exact_leaf_entropy(model, flows)
        nodes = node_entropies(model, max(2, num_samples // 4), generator) if per_node else None
    finally:
        model.train(was_training)

    discrete = model.leaf_spec.is_discrete or bin_width is not None
    offset = 0.0
    if not model.leaf_spec.is_discrete and bin_width is not None:
        offset = model.num_variables * math.log(1.0 / bin_width)

    # The leaf term -sum_i log node_{0,i,Z_0}(x) has the exact mean H^0: it is the control
    # variate of every one-pass estimate, with the variance-minimizing coefficient of each.
    leaf_term = stats.levels[0]

    def one_pass(term: torch.Tensor) -> Estimate:
        return Estimate.controlled(term, leaf_term, h0, offset)

    levels = [Estimate(h0 + offset)] + [one_pass(t) for t in stats.levels[1:]]
    cumulative = torch.zeros_like(stats.log_px, dtype=torch.float64)
    tele = [Estimate(h0 + offset)]
    for gap in stats.gaps:
        cumulative = cumulative + gap.double().sum(1)
        tele.append(Estimate.of(cumulative, h0 + offset))
    h_x_tele = Estimate.of(cumulative + stats.root_gap.double(), h0 + offset)
    n = stats.log_px.shape[0]
    report = EntropyReport(
        levels=levels,
        levels_tele=tele,
        h_x=one_pass(stats.log_px),
        h_x_tele=h_x_tele,
        h_x_given_y=one_pass(stats.log_px_given_y) if model.num_classes > 1 else None,
        gaps=[g.double().mean(0).view(layer.grid).cpu() for g, layer in zip(stats.gaps, model.sums)],
        gap_se=[(g.double().std(0) / math.sqrt(n)).view(layer.grid).cpu() for g, layer in zip(stats.gaps, model.sums)],
        caps=[c.double().cpu() for c in caps],
        root_gap=Estimate.of(stats.root_gap.double()),
        root_cap=root_cap,
        bounds=[(lo + offset, hi + offset) for lo, hi in bounds],
        h_x_bounds=(h_x_bounds[0] + offset, h_x_bounds[1] + offset),
        num_variables=model.num_variables,
        discrete=discrete,
        num_samples=n,
        seconds=0.0,
        node_entropies=nodes,
        notes=[] if discrete else [DIFFERENTIAL_NOTE],
    )
    report.seconds = time.perf_counter() - start
    return report
