"""A throwaway PostgreSQL cluster (``initdb`` + ``postgres``) on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from kubetune.devstack.process import (
    HOST,
    PathLike,
    ServerProcess,
    ServiceError,
    as_user,
    check_port,
    check_port_free,
    check_timeout,
    free_port,
    is_root,
)


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
        directory: PathLike,
        port: int | None = None,
        *,
        fast: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        check_port(port)
        check_timeout(startup_timeout)
        self.directory = Path(directory).absolute()
        self.port = port
        self.fast = fast
        self.startup_timeout = startup_timeout
        self.password = secrets.token_hex(16)
        self._process: ServerProcess | None = None
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
            check_port_free(self.port, "PostgreSQL")
        bin_dir = _find_postgres_bin()
        user = self._server_user()
        self._prepare_directories(user)
        if not (self.data_directory / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self._socket_dir),
            "password_encryption": "scram-sha-256",
        }
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_directory)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._process = ServerProcess(
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
        return f"{driver}://{self.superuser}:{self.password}@{HOST}:{self.port}/{database}"

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
        if not is_root():
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
            ["test", "-w", str(self.directory)], check=False, **as_user(user)
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
                **as_user(user),
            )
        if result.returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
            raise ServiceError(f"initdb failed with code {result.returncode}. Log {self.log_path}:\n{tail}")
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
