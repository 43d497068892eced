"""``mlflow server`` with a database backend and proxied artifacts on S3."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from kubetune.devstack.process import (
    HOST,
    INSTALL_DEVSTACK,
    REGION,
    PathLike,
    ServerProcess,
    ServiceError,
    check_port,
    check_port_free,
    check_timeout,
    free_port,
    http_status,
    make_workdir,
)
from kubetune.redaction import url_secrets


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts (``--serve-artifacts``).

    Args:
        backend_uri: SQLAlchemy URL of the tracking and registry database, e.g.
            ``Postgres.url("mlflow")``; ``postgresql+psycopg://`` works with psycopg 3 alone.
        artifacts_destination: where the server stores artifacts, e.g. ``s3://mlflow/artifacts``.
        s3_env: variables that reach the S3 store (``MLFLOW_S3_ENDPOINT_URL``,
            ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), e.g. :meth:`S3Server.env`.
        port: TCP port; a free one when None.
        directory: where the log ``mlflow.log`` goes; a new temporary directory when None.
        startup_timeout: seconds to wait until ``GET /health`` answers 200. The first start on an
            empty database also creates its tables, which takes longer.
    """

    def __init__(
        self,
        backend_uri: str,
        artifacts_destination: str,
        s3_env: Mapping[str, str],
        port: int | None = None,
        *,
        directory: PathLike | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        check_port(port)
        check_timeout(startup_timeout)
        self.backend_uri = backend_uri
        self.artifacts_destination = artifacts_destination
        self.s3_env = dict(s3_env)
        self.port = port
        self.directory = Path(directory).absolute() if directory is not None else None
        self.startup_timeout = startup_timeout
        self._process: ServerProcess | None = None

    @property
    def uri(self) -> str:
        """The tracking URI, ``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise ServiceError("the MLflow server has no port yet: call start() first.")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> MlflowServer:
        """Start the server and wait for ``/health``; returns self."""
        if self.running:
            return self
        self._check_packages()
        if self.port is None:
            self.port = free_port()
        else:
            check_port_free(self.port, "The MLflow server")
        if self.directory is None:
            self.directory = make_workdir("kubetune-mlflow-")
        self.directory.mkdir(parents=True, exist_ok=True)
        # Inherit nothing MLflow- or AWS-specific from the caller: this server's settings only.
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "AWS_"))}
        env.update(self.s3_env)
        env.update(
            MLFLOW_BACKEND_STORE_URI=self.backend_uri,  # the environment, not argv: a password
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # else it starts 7 job workers
            AWS_DEFAULT_REGION=REGION,
            PYTHONUNBUFFERED="1",
        )
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--host", HOST,
            "--port", str(self.port),
            "--workers", "1",
            "--serve-artifacts",
            "--artifacts-destination", self.artifacts_destination,
        ]  # fmt: skip
        secret_values = [value for key, value in self.s3_env.items() if "SECRET" in key]
        self._process = ServerProcess(
            "The MLflow server",
            argv,
            log_path=self.directory / "mlflow.log",
            env=env,
            cwd=self.directory,
            redact=(*secret_values, *url_secrets(self.backend_uri)),
        )
        self._process.start()
        self._process.wait_until(self._healthy, timeout=self.startup_timeout, port=self.port)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _healthy(self) -> bool:
        return http_status(self.uri + "/health") == 200

    def _check_packages(self) -> None:
        import importlib.util

        needed = {"mlflow": "mlflow"}
        if self.artifacts_destination.startswith("s3://"):
            needed["boto3"] = "boto3"
        if self.backend_uri.startswith("postgresql+psycopg:"):
            needed["psycopg"] = "psycopg[binary]"
        elif self.backend_uri.startswith(("postgresql:", "postgresql+psycopg2:")):
            needed["psycopg2"] = "psycopg2-binary"
        missing = [pkg for mod, pkg in needed.items() if importlib.util.find_spec(mod) is None]
        if missing:
            raise ServiceError(
                f"The MLflow server needs {', '.join(missing)}: `{INSTALL_DEVSTACK}` installs what the dev stack "
                f"needs, or `pip install {' '.join(shlex.quote(pkg) for pkg in missing)}`."
            )
