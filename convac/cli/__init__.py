"""Thin Hydra entry points: ``convac-train`` (:mod:`.train`) and ``convac-eval`` (:mod:`.eval`)."""
