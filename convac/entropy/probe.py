"""``probe(model)``: measure the information scaling law of a ConvAC (DESIGN section 2)."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch

from convac.entropy.estimators import (
    SampleStatistics,
    analytic_bounds,
    exact_leaf_entropy,
    latent_entropy,
    mapping_caps,
    node_entropies,
    one_pass_statistics,
    row_entropies,
)
from convac.entropy.report import (
    EntropyReport,
    Estimate,
    controlled_terms,
    cross_fit_max,
    halves,
    mean_and_se,
    ratio_estimates,
)
from convac.errors import InvalidValueError
from convac.model import ConvAC

DEFAULT_NUM_SAMPLES = 64  # with three control variates: SE(H(X)) at most 0.41% of it on the default run
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
    bounds: bool = True,
) -> EntropyReport:
    """Estimate every level entropy, mapping gap and scaling-law check of ``model``.

    ``H^0`` is exact; ``H^l`` (``l >= 1``) and ``H(X)`` are one-pass Monte Carlo estimates over
    ``num_samples`` exact samples (drawn with a generator seeded by ``seed``, in batches of
    ``batch_size``), with control variates of known means and estimated variance-minimizing
    coefficients (:meth:`Estimate.controlled`): the leaf term (mean ``H^0``), the latent path's
    ``-log P(y, z)`` (mean ``H(Y, Z)``, :func:`latent_entropy`) and the difference between the
    one-pass and the telescoped integrands (mean ``H^0``). Gaps are Rao-Blackwellized and give the
    telescoped estimates; a layer's ``C_l`` has the standard error of the per-sample sums of its
    mappings' integrands (kept in ``report.layer_terms``). ``C_max`` and ``beta_max`` are also
    estimated by sample splitting (cross-fitted over the two halves of the samples), free of the
    upward bias of a maximum, with standard errors and upper confidence values
    (:class:`~convac.entropy.report.MaxEstimate`). ``bounds=False`` skips the analytic bounds
    (``report.bounds`` is then empty and ``report.h_x_bounds`` NaN; no metric uses them). For Gaussian leaves ``bin_width`` adds
    ``D * log(1 / bin_width)`` to every level (the discretized entropy); it is ignored for
    discrete leaves. The model is left as it is, its train/eval mode included (no ConvAC layer
    depends on the mode).
    """
    if num_samples < 2:
        raise InvalidValueError(f"num_samples must be at least 2, got {num_samples}")
    if bin_width is not None and bin_width <= 0:
        raise InvalidValueError(f"bin_width must be positive, got {bin_width}")
    start = time.perf_counter()
    device = model.class_logits.device
    generator = torch.Generator(device=device).manual_seed(seed)
    # The model stays in its mode (train or eval): no ConvAC layer reads it (no dropout, no batch
    # norm; nothing in convac reads ``self.training``), and switching it to eval and back walked
    # every submodule twice, about 80 us of a probe run at every epoch.
    # Inference mode: no autograd bookkeeping on the few hundred small operations (a probe of the
    # default model took 5.1 instead of 5.8 ms); the report below holds normal tensors.
    with torch.inference_mode(), model.fixed_weights():
        flows = model.latent_marginals()
        rows = row_entropies(model)
        chunks = [
            one_pass_statistics(model, flows, min(batch_size, num_samples - done), generator, rows)
            for done in range(0, num_samples, batch_size)
        ]
        # every estimate is a small float64 computation on the host, from (n,) integrands
        stats = SampleStatistics.concatenate(chunks).to_host()
        caps, root_cap = mapping_caps(model, flows, rows)
        level_bounds, h_x_bounds = analytic_bounds(model, flows, rows) if bounds else ([], (math.nan, math.nan))
        h0 = exact_leaf_entropy(model, flows)
        h_yz = latent_entropy(model, caps)  # H(Y, Z), the mean of the latent control variate
        nodes = node_entropies(model, max(2, num_samples // 4), generator) if per_node else None
    if nodes is not None:
        nodes = [tuple(t.clone() for t in node) for node in nodes]  # normal tensors outside inference mode

    discrete = model.leaf_spec.is_discrete or bin_width is not None
    offset = 0.0
    if not model.leaf_spec.is_discrete and bin_width is not None:
        offset = model.num_variables * math.log(1.0 / bin_width)

    gaps = stats.gaps  # (n, P_{l-1})
    n = len(stats.log_px)
    # Telescoped integrands: the Rao-Blackwellized gaps of the layers <= l summed (mean H^l - H^0),
    # with the root's for H(X).
    layer_terms = [g.sum(1) for g in gaps]  # (n,) per layer: mean C_l
    tele_terms = list(itertools.accumulate(layer_terms))
    h_x_tele_term = (tele_terms[-1] if tele_terms else 0.0) + stats.root_gap

    # Control variates of every one-pass estimate, with estimated variance-minimizing coefficients:
    # the leaf term -sum_i log node_{0,i,Z_0}(x) (exact mean H^0), the latent term -log P(y, z)
    # (exact mean H(Y, Z)) and, where there is one, the one-pass integrand minus the telescoped one
    # (mean H^0): the regression then weighs the two unbiased estimators optimally.
    controls = np.stack([stats.levels[0], stats.latent], 1)
    control_means = [h0, h_yz]

    def one_pass(term: np.ndarray, tele_term: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The per-sample terms of the controlled estimate of ``term``'s mean and the rank of its
        controls (:func:`controlled_terms`)."""
        if tele_term is None:
            return controlled_terms(term, controls, control_means)
        return controlled_terms(term, np.column_stack([controls, term - tele_term]), control_means + [h0])

    # H^1 .. H^L, H(X): their per-sample terms (mean: the estimate) and the ranks of their controls
    chain = [one_pass(t, u) for t, u in zip(stats.levels[1:], tele_terms)] + [one_pass(stats.log_px, h_x_tele_term)]
    levels = [Estimate(h0 + offset)] + [Estimate.of_controlled_terms(u, rank, offset) for u, rank in chain[:-1]]
    tele = [Estimate(h0 + offset)] + [Estimate.of(u, h0 + offset) for u in tele_terms]

    # C_max and beta_max by sample splitting: every candidate's estimate and SE on each half of the
    # samples, cross-fitted. The candidates of C_max: the gaps of every mapping, root included; of
    # beta_max: the ratios of consecutive levels, from the controlled terms (whose coefficients,
    # fitted on all samples, couple the halves only at order 1 / n, the order of the regression
    # estimator's own bias).
    parts = halves(n)
    mappings = np.concatenate([*gaps, stats.root_gap[:, None]], axis=1)  # (n, n_mappings)
    c_max_split = cross_fit_max(*(mean_and_se(mappings[part]) for part in parts))
    beta_se, beta_max_split = [math.nan] * len(chain), None
    if discrete:
        # (n, L + 2): H^0 (exact, a constant column), H^1 .. H^L, H(X)
        terms = np.column_stack([np.full(n, h0), *(u for u, _ in chain)]) + offset
        rank = max(r for _, r in chain)
        beta_se = ratio_estimates(terms, rank)[1].tolist()
        beta_max_split = cross_fit_max(*(ratio_estimates(terms[part], rank) for part in parts))
    report = EntropyReport(
        levels=levels,
        levels_tele=tele,
        h_x=Estimate.of_controlled_terms(*chain[-1], offset),
        h_x_tele=Estimate.of(h_x_tele_term, h0 + offset),
        h_x_given_y=Estimate.of_controlled_terms(*one_pass(stats.log_px_given_y), offset) if model.num_classes > 1 else None,
        gaps=[torch.from_numpy(g.mean(0)).view(layer.grid) for g, layer in zip(gaps, model.sums)],
        gap_se=[torch.from_numpy(g.std(0, ddof=1) / math.sqrt(n)).view(layer.grid) for g, layer in zip(gaps, model.sums)],
        caps=[c.to("cpu", torch.float64, copy=True) for c in caps],
        root_gap=Estimate.of(stats.root_gap),
        root_cap=root_cap,
        bounds=[(lo + offset, hi + offset) for lo, hi in level_bounds],
        h_x_bounds=(h_x_bounds[0] + offset, h_x_bounds[1] + offset),
        num_variables=model.num_variables,
        discrete=discrete,
        num_samples=n,
        seconds=0.0,
        node_entropies=nodes,
        notes=[] if discrete else [DIFFERENTIAL_NOTE],
        layer_terms=layer_terms,
        beta_se=beta_se,
        c_max_split=c_max_split,
        beta_max_split=beta_max_split,
    )
    report.seconds = time.perf_counter() - start
    return report
