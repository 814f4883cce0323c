"""``import convac``: the public names and subpackages."""
from __future__ import annotations

import subprocess
import sys


def test_import_convac_reaches_every_public_subpackage():
    """In a fresh interpreter: ``import convac`` then ``convac.entropy.probe(model)`` works (no
    AttributeError), the other subpackages are attributes too, and the slow optional
    imports (scikit-learn, Hydra) wait until they are needed."""
    script = """
import sys
import convac
model = convac.HTConvAC((1, 2, 2), convac.Bernoulli(), 2, 2)
report = convac.entropy.probe(model, num_samples=8)
assert report.num_levels == model.num_levels == 1
assert convac.data.create_datamodule and convac.zoo.list_models() and convac.training.ConvACModule
assert convac.callbacks.EntropyProbe and convac.callbacks.FiniteGuard
assert "sklearn" not in sys.modules and "hydra" not in sys.modules, sorted(sys.modules)
assert convac.plotting.__name__ == "convac.plotting" and convac.cli.__name__ == "convac.cli"
try:
    convac.no_such_name
except AttributeError as err:
    assert "no_such_name" in str(err)
else:
    raise AssertionError("convac.no_such_name did not raise AttributeError")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_lightning_is_used_through_its_public_api_only():
    """No import of a private Lightning module or name (``lightning.x._y``, ``from lightning.x
    import _y``) and no override of a Lightning class's private method: what lets pyproject.toml
    leave Lightning without an upper pin."""
    import ast
    from pathlib import Path

    import convac

    private = []
    for path in Path(convac.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lightning":
                names = node.module.split(".") + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [part for alias in node.names if alias.name.split(".")[0] == "lightning" for part in alias.name.split(".")]
            else:
                continue
            private += [f"{path.name}: {'.'.join(names)}" for name in names if name.startswith("_")]
    # nor an override of a Lightning class's private method (such as a logger's _check_log_dir_exists)
    import importlib
    import inspect
    import pkgutil

    for info in pkgutil.walk_packages(convac.__path__, "convac."):
        for cls in vars(importlib.import_module(info.name)).values():
            if not inspect.isclass(cls) or not cls.__module__.startswith("convac"):
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("lightning")]
            methods = [name for name, value in vars(cls).items() if inspect.isfunction(value) or isinstance(value, property)]
            private += [f"{cls.__name__}.{name} overrides {base.__name__}.{name}" for name in methods
                        if name.startswith("_") and not name.startswith("__") for base in bases if name in vars(base)]
    assert not private
    pin = next(line for line in (Path(convac.__file__).parents[1] / "pyproject.toml").read_text().splitlines()
               if line.strip().startswith('"lightning'))
    assert "<" not in pin
