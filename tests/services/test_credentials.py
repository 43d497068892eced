"""Credentials never leave the environment: a real search with a distinctive database password and
S3 secret, then a search of everything it produced for those values.

Searched: the CLI's stdout and stderr, every file under KUBETUNE_HOME (the kfp.local step logs and
outputs), the MLflow experiment, its runs' params, tags and JSON artifacts, the registered model and
its versions, the compiled pipeline YAML, the study's and the trials' attributes, and the messages of
the bad-input cases that carry the same secrets (an unreachable database, a wrong database name, an
MLflow URI with a password in it, a wrong S3 secret).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient
from psycopg import sql

from kubetune import devstack

# URL-special characters on purpose: the password reaches KUBETUNE_STORAGE percent-encoded.
DB_PASSWORD = f"Kt-Db:Pw@{secrets.token_hex(6)}/%x"
WRONG_S3_SECRET = f"KtWrongS3Secret{secrets.token_hex(8)}"
MLFLOW_PASSWORD = f"KtMlflowPw{secrets.token_hex(6)}"


def _spec(name: str, source: str) -> dict:
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "data": {"source": source},
            "objective": {"metric": "val_accuracy"},
            "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "architecture": {"blocks": {"low": 1, "high": 1}, "block": {"kind": {"choices": ["mlp"]}}},
            "budget": {"maxTrials": 2, "parallelTrials": 2, "trialsPerSegment": 2},
            "trial": {"epochs": 1, "heartbeatSeconds": 5},
        },
    }


def _cli(folder: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "MLFLOW_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**base, "KUBETUNE_HOME": str(folder / "home"), "COLUMNS": "300", **env},
        timeout=420,
    )


def _forms(secret: str) -> list[str]:
    """The secret as written and as it appears in a URL."""
    return sorted({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})


@pytest.fixture(scope="module")
def searched(postgres, s3, mlflow_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("credentials")
    role, database = f"kt_{secrets.token_hex(4)}", f"kt_creds_{secrets.token_hex(4)}"
    with psycopg.connect(postgres.url("postgres", driver="postgresql"), autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(DB_PASSWORD))
        )
        connection.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role))
        )
    storage = f"postgresql+psycopg://{role}:{urllib.parse.quote(DB_PASSWORD, safe='')}@127.0.0.1:{postgres.port}"
    bucket = f"creds-{secrets.token_hex(4)}"
    s3.make_bucket(bucket)
    from sklearn.datasets import load_digits

    digits, buffer = load_digits(), io.BytesIO()
    np.savez(buffer, x=digits.images.astype(np.float32), y=digits.target)
    s3.client().put_object(bucket, "digits.npz", io.BytesIO(buffer.getvalue()), len(buffer.getvalue()))
    env = {
        "KUBETUNE_STORAGE": f"{storage}/{database}",
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "KUBETUNE_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    name = f"creds-{secrets.token_hex(3)}"
    closed = devstack.free_port()
    runs = {
        "search": (_spec(name, f"s3://{bucket}/digits.npz"), env),
        "unreachable-db": (
            _spec("creds-db-down", "builtin:digits"),
            {
                **env,
                "KUBETUNE_STORAGE": f"{storage.rsplit(':', 1)[0]}:{closed}/{database}",
                "KUBETUNE_DB_CONNECT_SECONDS": "1",
            },
        ),
        "wrong-database": (_spec("creds-no-db", "builtin:digits"), {**env, "KUBETUNE_STORAGE": f"{storage}/absent"}),
        "mlflow-password": (
            _spec("creds-mlflow", "builtin:digits"),
            {
                **env,
                "MLFLOW_TRACKING_URI": f"http://kt:{MLFLOW_PASSWORD}@127.0.0.1:{closed}",
                "KUBETUNE_RETRY_ATTEMPTS": "1",
            },
        ),
        "wrong-s3-secret": (
            _spec("creds-s3", f"s3://{bucket}/digits.npz"),
            {**env, "AWS_SECRET_ACCESS_KEY": WRONG_S3_SECRET},
        ),
    }

    def run(case: str) -> subprocess.CompletedProcess:
        spec, case_env = runs[case]
        (folder / case).mkdir()
        (folder / case / "experiment.yaml").write_text(yaml.safe_dump(spec))
        return _cli(folder / case, ["run", "experiment.yaml"], case_env)

    with ThreadPoolExecutor(2) as pool:  # the search, and the four short mistakes beside it
        search = pool.submit(run, "search")
        mistakes = {case: pool.submit(run, case) for case in runs if case != "search"}
        results = {"search": search.result(), **{case: future.result() for case, future in mistakes.items()}}
    compiled = _cli(folder / "search", ["compile", "experiment.yaml", "-o", "pipeline.yaml"], env)
    return {
        "folder": folder,
        "results": results,
        "compiled": compiled,
        "env": env,
        "name": name,
        "secrets": _forms(DB_PASSWORD) + _forms(s3.secret_key) + [WRONG_S3_SECRET, MLFLOW_PASSWORD],
    }


def _assert_clean(where: str, text: str, secret_values: list[str]) -> None:
    for secret in secret_values:
        assert secret not in text, f"a secret appears in {where}"


def test_the_search_ran_and_the_mistakes_failed_as_user_errors(searched):
    results = searched["results"]
    assert results["search"].returncode == 0, results["search"].stdout[-3000:] + results["search"].stderr[-3000:]
    assert searched["compiled"].returncode == 0, searched["compiled"].stderr
    for case in ("unreachable-db", "wrong-database", "mlflow-password", "wrong-s3-secret"):
        assert results[case].returncode == 2, (case, results[case].stderr[-3000:])
        assert results[case].stderr.startswith("Error: ") and "Traceback" not in results[case].stderr
    assert "***@127.0.0.1" in results["unreachable-db"].stderr
    assert 'database "absent" does not exist' in results["wrong-database"].stderr
    assert "MLflow at http://***@127.0.0.1:" in results["mlflow-password"].stderr  # user and password masked
    assert "refused the credentials" in results["wrong-s3-secret"].stderr


def test_no_secret_in_cli_output_or_error_messages(searched):
    for case, result in searched["results"].items():
        _assert_clean(f"the output of `kubetune run` ({case})", result.stdout + result.stderr, searched["secrets"])
    compiled = searched["compiled"]
    _assert_clean("the output of `kubetune compile`", compiled.stdout + compiled.stderr, searched["secrets"])


def test_no_secret_in_step_logs_or_any_file_under_the_home(searched):
    files = [path for path in searched["folder"].rglob("*") if path.is_file()]
    logs = [path for path in files if path.suffix == ".log" and "logs" in path.parts]
    assert logs, "the kfp.local step logs were written"
    for path in files:
        data = path.read_bytes()
        for secret in searched["secrets"]:
            assert secret.encode() not in data, f"a secret appears in {path}"


def test_no_secret_in_the_compiled_pipeline(searched):
    pipeline = searched["folder"] / "search" / "pipeline.yaml"
    text = pipeline.read_text()
    assert "kubetune-credentials" in text, "credentials come from a Secret by reference"
    _assert_clean("the compiled pipeline", text, searched["secrets"])


def test_no_secret_in_mlflow(searched):
    client = MlflowClient(searched["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(searched["name"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 3, "a parent run and two trial runs"
    recorded = [json.dumps({"experiment": dict(experiment.tags), "artifact_location": experiment.artifact_location})]
    for run in runs:
        recorded.append(
            json.dumps(
                {
                    "params": run.data.params,
                    "tags": run.data.tags,
                    "name": run.info.run_name,
                    "artifact_uri": run.info.artifact_uri,
                }
            )
        )
        with tempfile.TemporaryDirectory() as folder:
            for artifact in client.list_artifacts(run.info.run_id):
                if artifact.path.endswith(".json"):
                    recorded.append(Path(client.download_artifacts(run.info.run_id, artifact.path, folder)).read_text())
    for version in client.search_model_versions(f"name = '{searched['name']}'"):
        recorded.append(json.dumps({"tags": version.tags, "source": version.source, "run": version.run_id}))
    _assert_clean("MLflow", "\n".join(recorded), searched["secrets"])


def test_no_secret_in_the_study(searched):
    study = optuna.load_study(study_name=searched["name"], storage=searched["env"]["KUBETUNE_STORAGE"])
    assert len(study.trials) == 2
    system_attrs = study._storage.get_study_system_attrs(study._study_id)  # no public accessor in Optuna 5
    recorded = [json.dumps(study.user_attrs, default=str), json.dumps(system_attrs, default=str)]
    recorded += [
        json.dumps({"user": t.user_attrs, "system": t.system_attrs, "params": t.params}, default=str)
        for t in study.trials
    ]
    _assert_clean("the study", "\n".join(recorded), searched["secrets"])
