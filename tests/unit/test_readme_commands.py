"""The README's commands are the ones CI runs, and its test command works after its Quick start."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _indented_command_after(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(r"^    (\S.*)$", section, re.MULTILINE).group(1)


def test_ci_runs_exactly_the_readmes_test_command():
    command = _indented_command_after("Tests")
    assert "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_test_command_installs_the_test_extras_the_quick_start_leaves_out():
    """The Quick start installs the package without its test extras; the test command must bring them."""
    quick_start = _indented_command_after("Quick start")
    assert ".[test]" not in quick_start
    setup = _indented_command_after("Tests").split("&&")[0].split()
    assert setup[:1] == ["bash"], "the set-up step runs before pytest in the same command"
    script = (ROOT / setup[1]).read_text()
    assert '-e ".[test]"' in script and "kfp-protos-2.15.0" in script and ".ci/services.sh" in script
