"""Entropy probes: the per-level entropies, mapping gaps, C and beta of the scaling law."""
from convac.entropy.probe import DEFAULT_NUM_SAMPLES, probe
from convac.entropy.report import EntropyReport, Estimate, MaxEstimate

__all__ = ["DEFAULT_NUM_SAMPLES", "EntropyReport", "Estimate", "MaxEstimate", "probe"]
