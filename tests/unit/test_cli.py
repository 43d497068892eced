"""The CLI: user mistakes exit 2 with one message and no traceback; commands do what they say."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner
from repo_paths import DIGITS

from kubetune import console
from kubetune.cli import cli
from kubetune.steps import SERVER_ENV


def _write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _digits():
    return yaml.safe_load(DIGITS.read_text())


def test_bad_spec_exits_2_naming_the_field_without_traceback(tmp_path):
    data = _digits()
    data["spec"]["budget"]["maxTrials"] = -3
    result = CliRunner().invoke(cli, ["validate", _write(tmp_path, data)])
    assert result.exit_code == 2
    assert "spec.budget.maxTrials" in result.output and "-3" in result.output
    assert "Traceback" not in result.output


def test_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.yaml"), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_validate_prints_the_spec_with_defaults(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(DIGITS)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["spec"]["trial"]["heartbeatSeconds"] == 30
    assert shown["metadata"]["name"] == "digits-cnn"


def test_compile_writes_the_pipeline(tmp_path):
    out = tmp_path / "digits.yaml"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS), "-o", str(out), "--image", "img:1"])
    assert result.exit_code == 0, result.output
    documents = list(yaml.safe_load_all(out.read_text()))
    assert documents[0]["pipelineInfo"]["name"] == "kubetune-digits-cnn"
    assert "img:1" in out.read_text()


def test_unreachable_database_exits_2_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STORAGE", "postgresql+psycopg://kt:S3cretPassw0rd@127.0.0.1:1/optuna")
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", str(DIGITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "127.0.0.1:1" in result.stderr and "KUBETUNE_STORAGE" in result.stderr
    assert "S3cretPassw0rd" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_run_serves_every_study_of_the_experiment_from_one_step_server_started_first(tmp_path, monkeypatch):
    seen = []

    def fake_run(experiment, verbose=False):
        socket = os.environ[SERVER_ENV]
        seen.append((experiment.name, socket, Path(socket).is_socket()))

    monkeypatch.setattr(console, "run_with_progress", fake_run)
    monkeypatch.delenv(SERVER_ENV, raising=False)
    data = _digits()
    data["spec"]["strategy"]["seeds"] = 2
    result = CliRunner().invoke(cli, ["run", _write(tmp_path, data), "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    assert [name for name, _, _ in seen] == ["digits-cnn", "digits-cnn-seed-2"]
    assert len({socket for _, socket, _ in seen}) == 1 and all(alive for _, _, alive in seen)
    assert SERVER_ENV not in os.environ  # stopped when the command ends
    assert (tmp_path / "home" / "logs" / "step-server.log").exists()
