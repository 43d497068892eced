"""The READMEs' commands are ones that run: CI runs the test command, the benchmark commands name real options."""

import re

import pytest
from repo_paths import REPO

README = (REPO / "README.md").read_text()
BENCHMARKS = REPO / "benchmarks"
BENCHMARKS_README = (BENCHMARKS / "README.md").read_text()


def _indented_command_after(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(r"^    (\S.*)$", section, re.MULTILINE).group(1)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_ci_runs_exactly_the_readmes_test_command():
    command = _indented_command_after("Tests")
    assert "pytest" in command
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_test_command_installs_the_test_extras_the_quick_start_leaves_out():
    """The Quick start installs the package without its test extras; the test command must bring them."""
    quick_start = _indented_command_after("Quick start")
    assert ".[test]" not in quick_start
    setup = _indented_command_after("Tests").split("&&")[0].split()
    assert setup[:1] == ["bash"], "the set-up step runs before pytest in the same command"
    script = (REPO / setup[1]).read_text()
    assert '-e ".[test]"' in script and "kfp-protos-2.15.0" in script and ".ci/services.sh" in script


def test_readme_links_to_benchmark_sections_that_exist():
    anchors = {_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", BENCHMARKS_README)}
    links = re.findall(r"\(benchmarks/README\.md#([\w-]+)\)", README)
    assert links, "the README's Measured summary links to the benchmarks"
    assert set(links) <= anchors


BENCHMARK_COMMANDS = re.findall(r"(?m)^    python benchmarks/(\w+)\.py(.*)$", BENCHMARKS_README)


@pytest.mark.parametrize(("script", "arguments"), BENCHMARK_COMMANDS, ids=[c[0] for c in BENCHMARK_COMMANDS])
def test_benchmark_commands_use_options_their_script_declares(script: str, arguments: str):
    source = (BENCHMARKS / f"{script}.py").read_text()
    for option in re.findall(r"--[\w-]+", arguments):
        assert f'"{option}"' in source, f"benchmarks/{script}.py has no option {option}"


def test_every_benchmark_has_a_command_and_results_named_after_its_script():
    commands = {script for script, _ in BENCHMARK_COMMANDS}
    results = re.findall(r"\]\(results/([\w-]+)\.json\)", BENCHMARKS_README)
    assert commands and results
    assert {name.split("-")[0] for name in results} == commands
