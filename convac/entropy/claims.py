"""The paper's claims, each in its rigorous form, measured on a model (DESIGN section 2).

Liu, "Information Scaling Law of Deep Neural Networks" (arXiv:1802.04473): Thm 1 (sigmoid),
Thm 2 (ReLU), Def 4 (layer entropy), Thm 3 (monotone chain), Assumption 1 (bounded gap per
mapping), Thm 4 (additive law) and Thm 5 (ratio law).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from convac.entropy.report import EntropyReport
from convac.model import ConvAC

Z = 4.0  # estimates are compared within Z standard errors


@dataclass
class Claim:
    """One claim: its name, rigorous statement, what was measured and whether it holds."""

    name: str
    statement: str
    measured: str
    holds: bool | None  # None: not applicable to this model


def _activation_inputs(model: ConvAC, n: int, seed: int) -> torch.Tensor:
    """Real-valued inputs for the activation theorems: the model's samples (Gaussian leaves) or
    a standard normal (discrete leaves, whose values have no differential entropy)."""
    generator = torch.Generator(device=model.class_logits.device).manual_seed(seed)
    if model.leaf_spec.is_discrete:
        return torch.randn(n, model.num_variables, generator=generator, device=model.class_logits.device, dtype=torch.float64)
    return model.sample(n, generator=generator).flatten(1).double()


def check_claims(model: ConvAC, report: EntropyReport, num_samples: int = 4096, seed: int = 0) -> list[Claim]:
    """Measure every claim on ``model`` given its entropy ``report``."""
    x = _activation_inputs(model, num_samples, seed)
    # Thm 1: h(s(X)) = h(X) + E[log s'(X)] per dimension, and s' = s (1 - s) <= 1/4.
    log_slope = (F.logsigmoid(x) + F.logsigmoid(-x)).mean(0)
    worst = float(log_slope.max())
    # Thm 2: ReLU is the identity on non-negative inputs, so h(ReLU(X)) = h(X) there.
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
    betas = report.betas
    return [
        Claim("Thm 1 (sigmoid)",
              "h(s(X)) - h(X) = E[log s'(X)] <= -log 4 per dimension",
              f"largest E[log s'(X_v)] = {worst:.4f} (bound {-math.log(4):.4f})",
              worst <= -math.log(4) + 1e-12),
        Claim("Thm 2 (ReLU)",
              "ReLU(x) = x for x >= 0, so h(ReLU(X)) = h(X) on non-negative X",
              f"max |ReLU(x) - x| over {x.numel()} non-negative values = {relu_error:g}",
              relu_error == 0.0),
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
              f"H(X) - H^0 = {growth:.3f}; n * C_max = {report.num_mappings} * {report.c_max:.4f}; "
              f"slacks {checks['additive_slack']:.3f} and {checks['cap_slack']:.3f}",
              checks["additive_slack"] >= 0 and checks["cap_slack"] >= 0),
        Claim("Thm 5 (ratio law)",
              "H(X) / H^0 = prod_l beta_l <= beta_max^(L+1) (discrete or discretized entropies)",
              (f"H(X)/H^0 = {report.h_x.value / report.levels[0].value:.4f}; beta_max = {max(betas):.4f}; "
               f"slack {checks['ratio_slack']:.4f}") if report.discrete else "not applicable: " + report.notes[0],
              checks["ratio_slack"] >= 0 if report.discrete else None),
    ]


def format_claims(claims: list[Claim]) -> str:
    """A plain-text table of the claims."""
    mark = {True: "holds", False: "FAILS", None: "n/a"}
    lines = []
    for claim in claims:
        lines.append(f"[{mark[claim.holds]:>5}] {claim.name}: {claim.statement}")
        lines.append(f"        measured: {claim.measured}")
    return "\n".join(lines)
