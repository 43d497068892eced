"""Size limits of a spec: YAML bombs, huge files and specs too large for a step's command line are refused
at validation with exit code 2, quickly, instead of hanging `validate` and `run` or failing inside a step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubetune.cli import cli
from kubetune.spec import MAX_SPEC_FILE_BYTES, MAX_SPEC_JSON_BYTES, SpecError, parse_experiment

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"
QUICK = 60  # seconds; each check below takes about one, the old code hung or ran out of memory


def _lol_bomb() -> str:
    """Nine levels of nine aliases: about 400 bytes that expand to 387 million strings."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _merge_bomb() -> str:
    """Merge keys (<<) copy the merged mappings while loading: PyYAML alone takes exponential time."""
    lines = ["m0: &m0 {x: 1, y: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}" for i in range(1, 13)]
    return "\n".join(lines) + "\n"


def _with_digits(prefix: str, labels: str) -> str:
    """The digits example after ``prefix`` (anchors), its metadata.labels set to ``labels``."""
    return prefix + DIGITS.read_text().replace("  name: digits-cnn\n", f"  name: digits-cnn\n  labels: {labels}\n")


def _validate_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    """A hang fails the test (by the timeout) rather than hanging the suite."""
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", str(path)], capture_output=True, text=True, timeout=QUICK
    )


@pytest.mark.parametrize(
    "document, expected",
    [
        pytest.param(_with_digits(_lol_bomb(), "*a9"), "expands to more than 262,144 characters", id="nested-aliases"),
        pytest.param(_with_digits(_merge_bomb(), "*m12"), "expands to more than 262,144 characters", id="merge-keys"),
        pytest.param(
            _with_digits("big: &big '" + "x" * 100_000 + "'\n", "{a: *big, b: *big, c: *big}"),
            "expands to more than 262,144 characters",
            id="aliased-long-string",
        ),
        pytest.param(
            _with_digits("", "&self {again: *self}"),
            "the alias *self refers to a value that contains it",
            id="recursive-alias",
        ),
        pytest.param(
            _with_digits("", "[" * 5_000 + "]" * 5_000), "values nest deeper than 32 levels", id="deep-nesting"
        ),
        pytest.param(
            "# padding\n" * (MAX_SPEC_FILE_BYTES // 10) + DIGITS.read_text(),
            "the spec file is larger than 262,144 bytes",
            id="huge-file",
        ),
    ],
)
def test_a_hostile_file_is_refused_quickly_with_exit_2(tmp_path, document, expected):
    path = tmp_path / "hostile.yaml"
    path.write_text(document)
    result = _validate_in_subprocess(path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_anchors_that_expand_a_little_are_still_accepted(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        _with_digits("", "&pool {pool: cpu, team: ml}").replace("  trial:\n", "  trial:\n    nodeSelector: *pool\n")
    )
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["metadata"]["labels"] == shown["spec"]["trial"]["nodeSelector"] == {"pool": "cpu", "team": "ml"}


def _spec_with_labels(total: int, character: str) -> dict:
    """The digits example with labels holding about ``total`` characters, each ``character``."""
    document = yaml.safe_load(DIGITS.read_text())
    document["metadata"]["labels"] = {f"k{i}": character * 100 for i in range(total // 100)}
    return document


def test_a_spec_too_large_for_a_command_line_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(_spec_with_labels(40_000, "x")))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "as JSON with every default" in result.output and f"{MAX_SPEC_JSON_BYTES:,}" in result.output
    assert "command-line argument" in result.output and "Traceback" not in result.output


def _largest_accepted(character: str) -> str:
    """The JSON of the largest spec validation accepts, its labels made of ``character``."""
    document = _spec_with_labels(0, character)
    labels = document["metadata"]["labels"]
    accepted = parse_experiment(document).to_json()
    for length in (1000, 100, 10, 1):  # add labels while they fit, then shorter ones
        while len(accepted) <= 2 * MAX_SPEC_JSON_BYTES:  # bounded even if nothing were refused
            labels[f"k{len(labels)}"] = character * length
            try:
                accepted = parse_experiment(document).to_json()
            except SpecError:
                labels.popitem()
                break
    return accepted


@pytest.mark.parametrize("character", ['"', "x", "é"])
def test_the_largest_accepted_spec_fits_a_steps_command_line(character):
    """kfp.local passes each step its executor input, holding the spec JSON escaped again, as one argument."""
    spec_json = _largest_accepted(character)
    assert MAX_SPEC_JSON_BYTES - 20 < len(spec_json) <= MAX_SPEC_JSON_BYTES
    executor_input = json.dumps({"inputs": {"parameterValues": {"experiment_spec": spec_json, "segment": 0}}})
    echoed = subprocess.run(
        [sys.executable, "-c", "import sys; print(len(sys.argv[1]))", executor_input],
        capture_output=True,
        text=True,
        timeout=QUICK,
        check=True,
    )
    assert int(echoed.stdout) == len(executor_input)


def test_a_received_value_is_shown_without_encoding_all_of_it():
    """A document built in memory with shared lists (as YAML aliases load) names the field at once."""
    script = (
        "from kubetune.spec import SpecError, parse_experiment\n"
        "import yaml\n"
        "bomb = ['lol'] * 9\n"
        "for _ in range(9):\n"
        "    bomb = [bomb] * 9\n"
        f"document = yaml.safe_load(open({str(DIGITS)!r}))\n"
        "document['metadata']['labels'] = bomb\n"
        "try:\n"
        "    parse_experiment(document)\n"
        "except SpecError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if "metadata.labels" in line)
    assert "valid dictionary" in line and '(got [[[[[[[[[["lol"' in line and len(line) < 200
