"""The shared parts of the local servers: one child process each, ports, work folders."""

from __future__ import annotations

import atexit
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubetune.ports import bind_error
from kubetune.redaction import scrub

HOST = "127.0.0.1"
REGION = "us-east-1"
PathLike = str | os.PathLike[str]


# The packages `kubetune dev-stack` needs beyond kubetune's own (pyproject.toml's `devstack` extra).
INSTALL_DEVSTACK = "pip install 'kubetune[devstack]'"


class ServiceError(RuntimeError):
    """A local server could not start: a binary is missing, a port is taken, or it never became
    ready. The message says what is missing and how to fix it."""


# --------------------------------------------------------------------------------------------
# Small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    if bind_error(HOST, port) is not None:
        raise ServiceError(
            f"{what} cannot listen on {HOST}:{port}: the port is in use. "
            "Stop whatever listens there, or leave the port unset to pick a free one."
        )


def check_port(port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535 but got {port}.")


def check_timeout(startup_timeout: float) -> None:
    if startup_timeout <= 0:
        raise ValueError(f"startup_timeout must be positive but got {startup_timeout}.")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def make_workdir(prefix: str = "kubetune-") -> Path:
    """Create a private temporary directory for servers.

    As root it is made traversable (mode 0711: no listing) so that PostgreSQL, which then runs as
    user ``postgres``, can reach a subdirectory it owns. The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if is_root():
        path.chmod(0o711)
    return path


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def as_user(user: str | None) -> dict[str, Any]:
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


_LIVE: set[ServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_LIVE):
        process.stop()


class ServerProcess:
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
                **as_user(self.user),
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
        text = scrub(text, *self.redact)
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
                        f"{self.name} cannot listen on {HOST}:{port}: the port is in use. Log {self.log_path}:\n{log}"
                    )
                raise ServiceError(f"{self.name} exited with code {code} while starting. Log {self.log_path}:\n{log}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"{self.name} did not become ready within {timeout:g} s. Log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)
