"""scripts/gpu_check.sh runs only where a GPU is lent, which is rare: its commands must be valid
before one is. Every ``scripts/bench.py`` and ``scripts/results.py`` command in it is parsed by
that script's own argument parser, and every ``convac-train`` run it makes (directly, or
through ``results.py precision``) is composed from the configs, with the script's variables set
as on a GPU."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from hydra import compose, initialize_config_module


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
VARIABLES = {"$PY": "python3", "$DEVICE": "cuda", "$TRAINER": "gpu", "$OUT": "results/gpu", "$MNIST": "results/mnist-t10k"}


def stage_commands(program: str) -> list[list[str]]:
    """The arguments after ``program`` (``scripts/bench.py``, ``convac.cli.train``, ...) of each
    stage that runs it, the script's variables replaced."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not re.match(r"\s*stage ", line) or program not in line:
            continue
        for variable, value in VARIABLES.items():
            line = line.replace(variable, value)
        words = shlex.split(line)
        commands.append(words[words.index(program) + 1:])
    return commands


def composes(overrides: list[str]) -> None:
    """Compose ``convac-train``'s config with ``overrides`` (Hydra raises on an unknown group,
    option or key)."""
    with initialize_config_module("convac.configs", version_base="1.3"):
        compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_bench_command_parses(bench):
    commands = stage_commands("scripts/bench.py")
    assert len(commands) == 3, commands  # a renamed script or stage would hide its commands
    for arguments in commands:
        args = bench.parse_args(arguments)  # argparse exits (SystemExit) on an unknown option or value
        assert args.device == "cuda" and args.only, arguments


def test_every_training_run_composes(results):
    [precision] = stage_commands("scripts/results.py")
    args = results.parse_args(precision)
    assert args.table == "precision" and args.overrides == ["trainer=gpu"]
    for name in results.PRECISION_RUNS:
        for level in args.precisions:
            composes(results.precision_args(name, level, args.overrides, args.data_root))
    [mnist] = stage_commands("convac.cli.train")
    assert "trainer=gpu" in mnist
    composes(mnist)


def test_every_stage_has_a_time_limit_and_they_fit_a_ten_minute_run():
    limits = [int(m) for m in re.findall(r"^\s*stage \w+ (\d+) ", SCRIPT.read_text(), flags=re.M)]
    assert len(limits) == 7 and sum(limits) <= 570, limits
