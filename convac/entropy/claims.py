"""The paper's claims, each in its rigorous form, on a model (DESIGN section 2).

Liu, "Information Scaling Law of Deep Neural Networks" (arXiv:1802.04473): Thm 1 (sigmoid),
Thm 2 (ReLU), Def 4 (layer entropy), Thm 3 (monotone chain), Assumption 1 (bounded gap per
mapping), Thm 4 (additive law) and Thm 5 (ratio law).

Two kinds of claim (:attr:`Claim.kind`):

* ``MEASURED``: Def 4, Thm 3, Assumption 1, Thm 4 and Thm 5 are tested against the model's
  entropy report; they can fail, and only they are evidence about the model (:func:`tally`).
* ``IDENTITY``: Thm 1 (``s'(x) = s(x) (1 - s(x)) <= 1/4`` for every real ``x``) and Thm 2
  (``ReLU(x) = x`` for every ``x >= 0``) are facts about the activations that follow from their
  definitions: they hold for every input, so evaluating them on the model's samples cannot fail
  and says nothing about the model. They are reported as identities; the number printed beside
  them is an arithmetic sanity check, not a measurement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from convac.entropy.report import EntropyReport
from convac.model import ConvAC

Z = 4.0  # estimates are compared within Z standard errors

MEASURED = "measured"
IDENTITY = "identity (holds by definition)"


@dataclass
class Claim:
    """One claim: its name, rigorous statement, what was computed and whether it holds.

    ``kind`` is :data:`MEASURED` (tested on the model: evidence) or :data:`IDENTITY` (true for
    every input by the definitions: ``holds`` is then only an arithmetic sanity check, never
    evidence, and :func:`tally` leaves it out)."""

    name: str
    statement: str
    measured: str
    holds: bool | None  # None: not applicable to this model
    kind: str = MEASURED


def _activation_inputs(model: ConvAC, n: int, seed: int) -> torch.Tensor:
    """Real-valued inputs for the activation theorems: the model's samples (Gaussian leaves) or
    a standard normal (discrete leaves, whose values have no differential entropy)."""
    generator = torch.Generator(device=model.class_logits.device).manual_seed(seed)
    if model.leaf_spec.is_discrete:
        return torch.randn(n, model.num_variables, generator=generator, device=model.class_logits.device, dtype=torch.float64)
    return model.sample(n, generator=generator).flatten(1).double()


def check_claims(model: ConvAC, report: EntropyReport, num_samples: int = 4096, seed: int = 0) -> list[Claim]:
    """Every claim on ``model`` given its entropy ``report``: the measured ones tested against
    the report, Thms 1 and 2 as identities (evaluated on ``num_samples`` inputs only as an
    arithmetic sanity check; they hold for every input)."""
    x = _activation_inputs(model, num_samples, seed)
    # Thm 1 (identity): h(s(X)) = h(X) + E[log s'(X)] per dimension (change of variables), and
    # s' = s (1 - s) <= 1/4 for every real x, so E[log s'(X)] <= -log 4 whatever X is.
    log_slope = (F.logsigmoid(x) + F.logsigmoid(-x)).mean(0)
    worst = float(log_slope.max())
    # Thm 2 (identity): ReLU is the identity on non-negative inputs, so h(ReLU(X)) = h(X) there.
    nonneg = x.abs()
    relu_error = float((F.relu(nonneg) - nonneg).abs().max())

    chain = [e for e in report.levels] + [report.h_x]
    steps = [(a, b) for a, b in zip(chain, chain[1:])]
    worst_step = min((b.value - a.value) / max(math.hypot(a.se, b.se), 1e-12) for a, b in steps)
    tele_z = max(abs(m.value - t.value) / max(math.hypot(m.se, t.se), 1e-12) for m, t in zip(report.levels, report.levels_tele))

    gap_z_low = min([float(((g + Z * se)).min()) for g, se in zip(report.gaps, report.gap_se)] + [report.root_gap.value + Z * report.root_gap.se])
    over_cap = max([float((g - Z * se - c).max()) for g, se, c in zip(report.gaps, report.gap_se, report.caps)]
                   + [report.root_gap.value - Z * report.root_gap.se - report.root_cap])
    log_k = [math.log(k) for k in model.channels]  # K_in of each layer's sums, then the root's
    cap_over_logk = max([float(c.max()) - lk for c, lk in zip(report.caps, log_k)] + [report.root_cap - log_k[-1]])

    checks = report.checks()
    growth = report.h_x.value - report.levels[0].value
    return [
        Claim("Thm 1 (sigmoid)",
              "h(s(X)) - h(X) = E[log s'(X)] <= -log 4 per dimension",
              f"s'(x) = s(x) (1 - s(x)) <= 1/4 for every real x; arithmetic check: largest "
              f"E[log s'(X_v)] = {worst:.4f} (bound {-math.log(4):.4f})",
              worst <= -math.log(4) + 1e-12, IDENTITY),
        Claim("Thm 2 (ReLU)",
              "ReLU(x) = x for x >= 0, so h(ReLU(X)) = h(X) on non-negative X",
              f"ReLU(x) = max(x, 0) = x for every x >= 0; arithmetic check: max |ReLU(x) - x| over "
              f"{x.numel()} non-negative values = {relu_error:g}",
              relu_error == 0.0, IDENTITY),
        Claim("Def 4 (layer entropy)",
              "H(phi^l | d^l) := H(X | Z_l) = sum_i sum_k pi_{l,i}(k) H(node_{l,i,k})",
              f"one-pass and telescoped estimates agree within {tele_z:.2f} SE (worst level)",
              tele_z <= Z),
        Claim("Thm 3 (monotone chain)",
              "H^0 <= H^1 <= ... <= H^L <= H(X) (Z_l -> Z_{l-1} -> X is a Markov chain)",
              "chain " + " <= ".join(f"{e.value:.3f}" for e in chain) + f"; smallest step {worst_step:.1f} SE",
              worst_step >= -Z),
        Claim("Assumption 1 (bounded gap)",
              "0 <= Delta_R = I(X_S; A_R | Z_parent) <= cap_R = sum_j pi(j) H(w_R[j,:]) <= log K_in",
              f"min Delta_R + {Z:g} SE = {gap_z_low:.4f}; max Delta_R - {Z:g} SE - cap_R = {over_cap:.4f}; "
              f"max cap_R - log K_in = {cap_over_logk:.4f}",
              gap_z_low >= 0 and over_cap <= 0 and cap_over_logk <= 1e-9),
        Claim("Thm 4 (additive law)",
              "H(X) - H^0 = sum_R Delta_R <= n_mappings * C_max, and <= sum_R cap_R",
              f"H(X) - H^0 = {growth:.3f}; n * C_max = {report.num_mappings} * {report.c_max_estimate.upper:.4f} "
              f"(C_max's upper 97.5% value); "
              f"slacks {checks['additive_slack']:.3f} and {checks['cap_slack']:.3f}",
              checks["additive_slack"] >= 0 and checks["cap_slack"] >= 0),
        Claim("Thm 5 (ratio law)",
              "H(X) / H^0 = prod_l beta_l <= beta_max^(L+1) (discrete or discretized entropies)",
              (f"H(X)/H^0 = {report.h_x.value / report.levels[0].value:.4f}; beta_max = "
               f"{report.beta_max_estimate.upper:.4f} (upper 97.5% value); "
               f"slack {checks['ratio_slack']:.4f}") if report.discrete else "not applicable: " + report.notes[0],
              checks["ratio_slack"] >= 0 if report.discrete else None),
    ]


def tally(claims: list[Claim]) -> dict[str, int]:
    """Counts of the *measured* claims that ``holds``, ``fails`` or are ``n/a``, and the number
    of ``identities`` (left out of the three counts: they cannot fail, so they are no evidence)."""
    measured = [c for c in claims if c.kind == MEASURED]
    return {"holds": sum(c.holds is True for c in measured), "fails": sum(c.holds is False for c in measured),
            "n/a": sum(c.holds is None for c in measured), "identities": len(claims) - len(measured)}


def format_claims(claims: list[Claim]) -> str:
    """A plain-text table of the claims: a measured claim is marked ``holds``, ``FAILS`` or
    ``n/a``; an identity is marked ``identity`` whatever its arithmetic check gave (a failed
    check, a numerical bug, says ``CHECK FAILED``). The last line counts the measured claims."""
    mark = {True: "holds", False: "FAILS", None: "n/a"}
    lines = []
    for claim in claims:
        if claim.kind == IDENTITY:
            lines.append(f"[identity] {claim.name}: {claim.statement}")
            lines.append(f"           {IDENTITY}, not a measurement on the model: {claim.measured}"
                         + ("" if claim.holds is not False else " (CHECK FAILED)"))
        else:
            lines.append(f"[{mark[claim.holds]:>8}] {claim.name}: {claim.statement}")
            lines.append(f"           {MEASURED}: {claim.measured}")
    counts = tally(claims)
    lines.append(f"measured claims: {counts['holds']} hold, {counts['fails']} fail, {counts['n/a']} n/a; "
                 f"{counts['identities']} identities hold by definition and are not counted")
    return "\n".join(lines)
