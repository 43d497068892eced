"""Bad input against the real servers: one clear message naming the field or endpoint, exit code 2.

Through the CLI (``kubetune run``, as a user runs it) where the path goes through a pipeline step or
the runner's own first contact with the database and MLflow; the other data and database mistakes
through the library calls those same steps make, which is much faster and checks the same message.
Every message must name what to fix, be a :class:`kubetune.errors.UserError` (so the CLI exits 2),
carry no traceback, and leave nothing recorded half-way (no trial, no MLflow run, no model).
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from kubetune import devstack
from kubetune.data import DataError, load_split
from kubetune.errors import UserError
from kubetune.spec import parse_experiment
from kubetune.storage import StudyError, open_storage
from kubetune.study import ensure_study


def _document(name: str, data: dict) -> dict:
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "data": data,
            "objective": {"metric": "val_accuracy"},
            "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "architecture": {"blocks": {"low": 1, "high": 1}, "block": {"kind": {"choices": ["mlp"]}}},
            "budget": {"maxTrials": 2, "parallelTrials": 2, "trialsPerSegment": 2},
            "trial": {"epochs": 1, "heartbeatSeconds": 5},
        },
    }


def _digits_npz() -> bytes:
    from sklearn.datasets import load_digits

    digits = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, x=digits.images.astype(np.float32), y=digits.target)
    return buffer.getvalue()


def _closed_port() -> int:
    return devstack.free_port()  # free now, and nothing listens there


def run_cli(folder: Path, document: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``kubetune run`` on ``document`` with exactly the given kubetune/MLflow/AWS variables."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(document))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "MLFLOW_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", str(spec_path)],
        env={**base, "KUBETUNE_HOME": str(folder / "home"), "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_user_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 2, no traceback, and one ``Error:`` line holding every expected fragment."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    for fragment in expected:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def cli_cases(stack_env_module, s3, mlflow_server, tmp_path_factory):
    """Four mistakes run through the CLI at once (each is a separate `kubetune run`)."""
    folder = tmp_path_factory.mktemp("bad-input")
    bucket = f"bad-{secrets.token_hex(4)}"
    s3.make_bucket(bucket)
    s3.client().put_object(bucket, "digits.npz", io.BytesIO(_digits_npz()), len(_digits_npz()))
    closed = _closed_port()
    good = dict(stack_env_module)
    cases = {
        "missing-file": (_document("missing-file", {"source": f"file://{folder}/nowhere/digits.npz"}), good),
        "wrong-s3-keys": (
            _document("wrong-s3-keys", {"source": f"s3://{bucket}/digits.npz"}),
            {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + secrets.token_hex(8)},
        ),
        "unreachable-db": (
            _document("unreachable-db", {"source": "builtin:digits"}),
            {
                **good,
                "KUBETUNE_STORAGE": f"postgresql+psycopg://kubetune:pw-{secrets.token_hex(6)}"
                f"@127.0.0.1:{closed}/optuna",
                "KUBETUNE_DB_CONNECT_SECONDS": "1",
            },
        ),
        "silent-mlflow": (
            _document("silent-mlflow", {"source": "builtin:digits"}),
            {
                **good,
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}",
                "KUBETUNE_RETRY_ATTEMPTS": "2",
                "KUBETUNE_RETRY_BACKOFF_SECONDS": "0.2",
            },
        ),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(run_cli, folder / name, document, env) for name, (document, env) in cases.items()}
        results = {name: future.result() for name, future in futures.items()}
    return {"results": results, "cases": cases, "bucket": bucket, "closed": closed, "env": good, "folder": folder}


@pytest.fixture(scope="module")
def stack_env_module(postgres, s3, mlflow_server) -> dict[str, str]:
    """Like ``stack_env``, for the module's CLI runs: a study database of their own."""
    return {
        "KUBETUNE_STORAGE": postgres.create_database(f"optuna_bad_{secrets.token_hex(4)}"),
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "KUBETUNE_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


def _nothing_recorded(env: dict, name: str) -> None:
    """No trial in the study (if it was created at all), no MLflow trial run, no registered model."""
    try:
        trials = optuna.load_study(study_name=name, storage=env["KUBETUNE_STORAGE"]).trials
    except KeyError:
        trials = []
    assert trials == []
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    found = client.get_experiment_by_name(name)
    if found is not None:
        assert client.search_runs([found.experiment_id], "tags.`kubetune.role` = 'trial'") == []
    assert client.search_model_versions(f"name = '{name}'") == []


def test_missing_dataset_file_through_the_cli(cli_cases):
    folder = cli_cases["folder"]
    message = assert_user_error(
        cli_cases["results"]["missing-file"], "data.source", f"{folder}/nowhere/digits.npz", "does not exist"
    )
    assert "DataError" not in message
    _nothing_recorded(cli_cases["env"], "missing-file")


def test_wrong_s3_keys_through_the_cli(cli_cases, s3):
    case = cli_cases["results"]["wrong-s3-keys"]
    message = assert_user_error(
        case,
        "data.source",
        f"s3://{cli_cases['bucket']}/digits.npz",
        s3.endpoint,
        "refused the credentials",
        "AWS_SECRET_ACCESS_KEY",
    )
    wrong = cli_cases["cases"]["wrong-s3-keys"][1]["AWS_SECRET_ACCESS_KEY"]
    assert wrong not in case.stdout + case.stderr and s3.secret_key not in message
    _nothing_recorded(cli_cases["env"], "wrong-s3-keys")


def test_unreachable_database_through_the_cli(cli_cases):
    case = cli_cases["results"]["unreachable-db"]
    url = cli_cases["cases"]["unreachable-db"][1]["KUBETUNE_STORAGE"]
    password = url.split(":")[2].split("@")[0]
    message = assert_user_error(
        case,
        "cannot open the study database",
        f"postgresql+psycopg://kubetune:***@127.0.0.1:{cli_cases['closed']}/optuna",
        "KUBETUNE_STORAGE",
    )
    assert password not in case.stdout + case.stderr and "refused" in message.lower()
    assert MlflowClient(cli_cases["env"]["MLFLOW_TRACKING_URI"]).get_experiment_by_name("unreachable-db") is None


def test_mlflow_that_does_not_answer_through_the_cli(cli_cases):
    case = cli_cases["results"]["silent-mlflow"]
    assert_user_error(
        case,
        f"MLflow at http://127.0.0.1:{cli_cases['closed']} does not answer",
        "after 2 attempts",
        "MLFLOW_TRACKING_URI",
    )
    _nothing_recorded(cli_cases["env"], "silent-mlflow")


# --------------------------------------------------------------------------------------------
# The other data mistakes, through the retrieve step's own call


def _expect_data_error(data: dict, *expected: str) -> str:
    with pytest.raises(DataError) as caught:
        load_split(data)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, message
    return message


def test_corrupt_dataset_file(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive" + os.urandom(64))
    _expect_data_error({"source": path.as_uri()}, "data.source", str(path), "not a readable .npz file")


def test_wrong_sha256(tmp_path):
    path = tmp_path / "digits.npz"
    path.write_bytes(_digits_npz())
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    _expect_data_error(
        {"source": path.as_uri(), "sha256": "0" * 64},
        "data.sha256 does not match",
        f"expected {'0' * 64} but received {actual}",
    )


def test_s3_bucket_that_does_not_exist(use_stack_env, s3):
    _expect_data_error(
        {"source": "s3://no-such-bucket-kt/digits.npz"},
        "data.source",
        "bucket 'no-such-bucket-kt' does not exist",
        s3.endpoint,
    )


def test_s3_key_that_does_not_exist(use_stack_env, s3, bucket):
    _expect_data_error(
        {"source": f"s3://{bucket}/missing/digits.npz"},
        "data.source",
        f"key 'missing/digits.npz' does not exist in bucket '{bucket}'",
        s3.endpoint,
    )


def test_s3_server_that_does_not_answer(use_stack_env, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("KUBETUNE_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    _expect_data_error(
        {"source": "s3://data/digits.npz"}, f"cannot reach S3 endpoint http://127.0.0.1:{port}", "KUBETUNE_S3_ENDPOINT"
    )


# --------------------------------------------------------------------------------------------
# The other database mistakes: they fail at once (waiting cannot fix them), password-free


def _experiment():
    return parse_experiment(_document(f"bad-db-{secrets.token_hex(3)}", {"source": "builtin:digits"}))


def test_wrong_database_password_fails_at_once(postgres):
    url = postgres.url("postgres").replace(postgres.password, "wrong-" + postgres.password[:6])
    with pytest.raises(StudyError) as caught:
        open_storage(_experiment(), url)
    message = str(caught.value)
    assert "password authentication failed" in message and "KUBETUNE_STORAGE" in message
    assert f"postgres:***@127.0.0.1:{postgres.port}/postgres" in message
    assert postgres.password[:6] not in message


def test_missing_database_fails_at_once(postgres):
    url = postgres.url(f"absent_{secrets.token_hex(3)}")
    with pytest.raises(StudyError, match=r"database \"absent_\w+\" does not exist") as caught:
        open_storage(_experiment(), url)
    assert postgres.password not in str(caught.value)


def test_database_away_longer_than_the_retry_window_names_it(tmp_path, monkeypatch):
    """A database that goes away mid-run is waited for, then reported with its address."""
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "1")
    workdir = devstack.make_workdir("kubetune-pg-away-")
    server = devstack.Postgres(workdir / "pg", fast=True).start()
    try:
        experiment = _experiment()
        study = ensure_study(experiment, storage=open_storage(experiment, server.create_database("away")))
        server.stop()
        with pytest.raises(StudyError) as caught:
            study.ask()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}/away" in message and "did not answer for 1 s" in message
    assert server.password not in message and "KUBETUNE_DB_RETRY_SECONDS" in message
