"""The three servers together, and the body of ``kubetune dev-stack``."""

from __future__ import annotations

import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.devstack.mlflow_server import MlflowServer
from kubetune.devstack.postgres import Postgres
from kubetune.devstack.process import PathLike, ServiceError, is_root, make_workdir
from kubetune.devstack.s3 import S3Server


class LocalStack:
    """PostgreSQL, S3 and MLflow in one directory, wired together.

    Layout: ``directory/postgres`` (databases ``optuna`` and ``mlflow``), ``directory/s3`` (bucket
    ``mlflow``, holding MLflow's artifacts under ``artifacts/``, and bucket ``data``), and
    ``directory/mlflow`` (the MLflow server's log). Data in an existing directory is reused; keys,
    passwords and ports are new on every start.

    Args:
        directory: where everything lives; when None, a new temporary directory that
            :meth:`stop` removes.
        fast: PostgreSQL without fsync (tests).

    Example:
        .. code-block:: python

            with LocalStack() as stack:
                os.environ.update(stack.env)
    """

    mlflow_bucket = "mlflow"
    data_bucket = "data"

    def __init__(self, directory: PathLike | None = None, *, fast: bool = False) -> None:
        self._temporary = directory is None
        if directory is None:
            self.directory = make_workdir("kubetune-dev-")
        else:
            self.directory = Path(directory).absolute()
        self.postgres = Postgres(self.directory / "postgres", fast=fast)
        self.s3 = S3Server(self.directory / "s3")
        self.mlflow: MlflowServer | None = None

    def start(self) -> dict[str, str]:
        """Start all three (stopping those started if one fails); return :attr:`env`."""
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            if is_root():
                self.directory.chmod(0o711)  # user postgres must reach directory/postgres
        try:
            self.postgres.start()
            self.postgres.create_database("optuna")
            self.postgres.create_database("mlflow")
            self.s3.start()
            self.s3.make_bucket(self.mlflow_bucket)
            self.s3.make_bucket(self.data_bucket)
            self.mlflow = MlflowServer(
                self.postgres.url("mlflow"),
                f"s3://{self.mlflow_bucket}/artifacts",
                self.s3.env(),
                directory=self.directory / "mlflow",
            ).start()
        except BaseException:
            self.stop()
            raise
        return self.env

    @property
    def env(self) -> dict[str, str]:
        """What a user exports to use the stack. It holds secrets: never log it."""
        if self.mlflow is None:
            raise ServiceError("the stack is not started: call start() first.")
        return {
            "KUBETUNE_STORAGE": self.postgres.url("optuna"),
            "MLFLOW_TRACKING_URI": self.mlflow.uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
            "KUBETUNE_S3_ENDPOINT": self.s3.endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }

    def dead(self) -> list[str]:
        """Names of the services that should run but do not."""
        running = {
            "PostgreSQL": self.postgres.running,
            "S3": self.s3.running,
            "MLflow": self.mlflow is not None and self.mlflow.running,
        }
        return [name for name, up in running.items() if not up]

    def stop(self) -> None:
        """Stop MLflow, S3, PostgreSQL, in that order; remove the directory if temporary."""
        if self.mlflow is not None:
            self.mlflow.stop()
        self.s3.stop()
        self.postgres.stop()
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_dev_stack(directory: PathLike | None, *, echo: Callable[[str], Any] = print) -> None:
    """The body of ``kubetune dev-stack``: start the stack, print ``export`` lines, wait for Ctrl-C.

    The ``export`` lines carry the stack's throwaway password and keys: the user needs them, and
    this is the only place they are printed.

    Args:
        directory: where the stack keeps its data, kept afterwards and reused next time; when
            None, a temporary directory removed at the end.
        echo: prints one line, e.g. ``click.echo``.

    Raises:
        ServiceError: a server could not start, or one stopped while the stack ran.
    """
    stack = LocalStack(directory)
    echo(f"# Starting PostgreSQL, S3 (rclone) and MLflow in {stack.directory} ...")
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # `kill PID` stops the stack as cleanly as Ctrl-C
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        env = stack.start()
        for key, value in env.items():
            echo(f"export {key}={shlex.quote(value)}")
        echo(f"# MLflow UI: {env['MLFLOW_TRACKING_URI']}   S3: {env['KUBETUNE_S3_ENDPOINT']}")
        echo("# Local dev stack ready: paste the lines above into your shell. Ctrl-C stops it.")
        while not (dead := stack.dead()):
            time.sleep(0.5)
        raise ServiceError(f"{', '.join(dead)} stopped unexpectedly; the logs are in {stack.directory}.")
    except KeyboardInterrupt:
        echo("# Stopping ...")
    finally:
        stack.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    echo("# Stopped." + ("" if directory is None else f" The data stays in {stack.directory}."))


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
