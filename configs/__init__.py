"""The Hydra config root of convac (``pkg://convac.configs``). This folder holds only YAML: it
ships inside the wheel as the package ``convac.configs`` (``pyproject.toml``, ``package-dir``), so
that an installed convac finds its configs; the schemas live in :mod:`convac.config`."""
