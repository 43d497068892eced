"""Real servers for the service tests: PostgreSQL, an S3 server (rclone) and an MLflow server.

Each server starts once per test session (see :mod:`kubetune.devstack`). Where one cannot start on a
developer's machine (a binary is missing, say), the tests that need it are skipped with a message
saying what is missing; under CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from availability import require_or_skip

from kubetune import devstack


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """A private directory for the session's servers, removed afterwards.

    Not pytest's tmp_path: as root its parent is private, and PostgreSQL then runs as user postgres.
    """
    path = devstack.make_workdir("kubetune-services-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[devstack.Postgres]:
    """A throwaway PostgreSQL cluster (fsync off), deleted at the end of the session."""
    server = devstack.Postgres(services_dir / "postgres", fast=True)
    try:
        server.start()
    except devstack.ServiceError as exc:
        require_or_skip("PostgreSQL", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(services_dir: Path) -> Iterator[devstack.S3Server]:
    """An S3 server (``rclone serve s3``) with random keys."""
    server = devstack.S3Server(services_dir / "s3")
    try:
        server.start()
    except devstack.ServiceError as exc:
        require_or_skip("S3 server (rclone)", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(
    postgres: devstack.Postgres, s3: devstack.S3Server, services_dir: Path
) -> Iterator[devstack.MlflowServer]:
    """An MLflow server: backend database ``mlflow`` on ``postgres``, proxied artifacts in
    ``s3://mlflow/artifacts``."""
    backend = postgres.create_database("mlflow")
    s3.make_bucket("mlflow")
    server = devstack.MlflowServer(backend, "s3://mlflow/artifacts", s3.env(), directory=services_dir / "mlflow")
    try:
        server.start()
    except devstack.ServiceError as exc:
        require_or_skip("MLflow server", exc)
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: devstack.S3Server) -> str:
    """A fresh, empty bucket for one test."""
    name = f"test-{secrets.token_hex(4)}"
    s3.make_bucket(name)
    return name


@pytest.fixture
def stack_env(
    postgres: devstack.Postgres, s3: devstack.S3Server, mlflow_server: devstack.MlflowServer
) -> dict[str, str]:
    """The variables ``kubetune dev-stack`` exports, with a fresh study database for this test.

    The MLflow server and the S3 store are shared by the session: use a fresh experiment name
    (and the ``bucket`` fixture) to keep a test's data apart. Apply with
    ``monkeypatch.setenv`` or ``use_stack_env``.
    """
    return {
        "KUBETUNE_STORAGE": postgres.create_database(f"optuna_{secrets.token_hex(4)}"),
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "KUBETUNE_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }


@pytest.fixture
def use_stack_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``stack_env``, also set in ``os.environ`` for the duration of the test."""
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)
    return stack_env
