"""``import convac``: the public names and subpackages (issue 12, case 6)."""
from __future__ import annotations

import subprocess
import sys


def test_import_convac_reaches_every_public_subpackage():
    """In a fresh interpreter: ``import convac`` then ``convac.entropy.probe(model)`` works (it
    raised AttributeError), the other subpackages are attributes too, and the slow optional
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
