"""scripts/gpu_check.sh runs only where a GPU is lent, which is rare: its Python commands must
parse before one is. Every ``scripts/bench.py`` and ``scripts/results.py`` command in it is
parsed by that script's own argument parser, with the script's variables set as on a GPU."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import imported_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
VARIABLES = {"$PY": "python3", "$DEVICE": "cuda", "$TRAINER": "gpu", "$OUT": "results/gpu"}


def python_commands(name: str) -> list[list[str]]:
    """The arguments after ``scripts/<name>.py`` of each stage that runs it."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not line.startswith("stage ") or f"scripts/{name}.py" not in line:
            continue
        for variable, value in VARIABLES.items():
            line = line.replace(variable, value)
        words = shlex.split(line)
        commands.append(words[words.index(f"scripts/{name}.py") + 1:])
    return commands


@pytest.fixture(scope="module")
def bench():
    yield from imported_script("bench")


@pytest.fixture(scope="module")
def results():
    yield from imported_script("results")


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("name, expected", [("bench", 3), ("results", 1)])
def test_every_python_command_parses(name, expected, request):
    commands = python_commands(name)
    assert len(commands) == expected, commands  # a renamed script or stage would hide its commands
    module = request.getfixturevalue(name)
    for arguments in commands:
        args = module.parse_args(arguments)  # argparse exits (SystemExit) on an unknown option or value
        if name == "bench":
            assert args.device == "cuda" and args.only, arguments
        else:
            assert args.table == "precision" and args.overrides == ["trainer=gpu"], arguments


def test_every_stage_has_a_time_limit_and_they_fit_a_ten_minute_run():
    limits = [int(m) for m in re.findall(r"^\s*stage \w+ (\d+) ", SCRIPT.read_text(), flags=re.M)]
    assert len(limits) == 7 and sum(limits) <= 570, limits
