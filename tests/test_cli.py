"""The `lucafound` console script: every documented subcommand is present and explains itself."""

import subprocess
import sys

import pytest

from modeling_lucafound.cli import COMMAND_MODULES, build_parser


def test_every_subcommand_module_exists_and_registers():
    parser = build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command").choices
    assert set(subcommands) == set(COMMAND_MODULES)


@pytest.mark.parametrize("command", ["preprocess", "embed", "zero-shot", "convert", "demo"])
def test_required_subcommands_have_help(command):
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_lucafound.cli", command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: lucafound" in completed.stdout
