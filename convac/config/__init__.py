"""The typed side of the Hydra configs in ``configs/`` (shipped as the package ``convac.configs``):
:mod:`convac.config.schema`, the dataclass schemas that check the keys and types of every group,
and :mod:`convac.config.targets`, which checks every ``_target_`` node against its constructor."""
