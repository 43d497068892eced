"""Embedded mode's warm step server: each step's body runs in a fork of one process that imported once.

kfp.local starts a fresh Python process per step, and importing torch, Optuna and MLflow again in
each cost about 5 s of CPU per trial, more than training a small model. ``kubetune run`` starts this
server (``python -m kubetune.stepserver SOCKET``) with that stack imported but nothing opened: no
thread, no database connection, no tensor op, so forking is safe. Each call gets its own fork, which
writes to the calling step's stdout and stderr, runs one core function (:func:`kubetune.steps.run_here`)
and exits without interpreter teardown; a trial therefore cannot leak state into the next one. When
the step process dies (killed, like a lost pod), the fork notices the closed socket and exits too,
so a killed step stops its training just as it would in a cluster. The socket lives in a private
temporary folder (mode 0700), since requests carry the step's environment.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

from kubetune.steps import SERVER_ENV, failure, receive_message, run_here, send_message

__all__ = ["serving"]

READY = "ready"
# What every step would otherwise import for itself, including what the core imports lazily on first
# use: torch._dynamo by a step's first optimizer (about 1 s), alembic by the first study or MLflow store.
PRELOAD = (
    "torch",
    "torch._dynamo",
    "optuna",
    "alembic.command",
    "sqlalchemy.dialects.sqlite",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.tracing.export",
    "mlflow.tracing.processor",
    "kubetune.search",
    "kubetune.evaluate",
    "kubetune.segments",
    "kubetune.train",
    "kubetune.nas",
    "kubetune.data",
    "kubetune.local",
    "kubetune.report",
    "optuna.visualization",
)


class _Call(socketserver.BaseRequestHandler):
    """One step's call, handled in a fork of the server."""

    def handle(self) -> None:
        connection: socket.socket = self.request
        _, fds, _, _ = socket.recv_fds(connection, 1, 2)
        request = receive_message(connection)
        if request is None or len(fds) != 2:
            return
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(line_buffering=True)  # a step's log streams as it runs
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        threading.Thread(target=_exit_when_closed, args=(connection,), daemon=True).start()
        try:
            reply = {"result": run_here(request["target"], request["experiment_spec"], request["kwargs"])}
        except BaseException as error:  # noqa: BLE001 - the step fails with this failure; the traceback goes to its log
            traceback.print_exc()
            reply = {"error": failure(error)}
        sys.stdout.flush()
        sys.stderr.flush()
        send_message(connection, reply)


def _exit_when_closed(connection: socket.socket) -> None:
    """The step process sends nothing after its request, so end-of-stream means it died: stop working."""
    with contextlib.suppress(OSError):
        while connection.recv(1):
            pass
    os._exit(1)


class _Server(socketserver.ForkingMixIn, socketserver.UnixStreamServer):
    max_children = 64
    request_queue_size = 64

    def __init__(self, path: str) -> None:
        super().__init__(path, _Call)
        self._parent = os.getppid()

    def service_actions(self) -> None:
        super().service_actions()
        if os.getppid() != self._parent:  # the runner is gone; nobody will call again
            os._exit(0)


def preload() -> None:
    """Import what every step would import for itself, then freeze that heap (``gc.freeze``, as Python's docs
    advise before forking): each fork's collections would otherwise walk all of it, and a step's every read
    of the study collects once (:meth:`kubetune.storage.ReconnectingStorage._get_trials`), about 0.5 s a
    read on this machine.
    """
    import gc
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()


def main(path: str) -> None:
    """Listen at once, then import: a step that connects meanwhile waits in the queue, not in a retry loop."""
    server = _Server(path)
    print(READY, flush=True)
    preload()
    server.serve_forever(poll_interval=0.5)


@contextlib.contextmanager
def serving(log_path: Path) -> Iterator[str]:
    """Start the server for the block, with ``KUBETUNE_STEP_SERVER`` set to its socket; yields the socket path."""
    with tempfile.TemporaryDirectory(prefix="kubetune-steps-") as folder, log_path.open("w") as log:
        path = str(Path(folder) / "steps.sock")  # short: socket paths are limited to about 100 bytes
        process = subprocess.Popen(
            [sys.executable, "-m", "kubetune.stepserver", path], stdout=subprocess.PIPE, stderr=log, text=True
        )
        try:
            if process.stdout is None or process.stdout.readline().strip() != READY:
                raise RuntimeError(f"the step server did not start; see {log_path}")
            os.environ[SERVER_ENV] = path
            yield path
        finally:
            os.environ.pop(SERVER_ENV, None)
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main(sys.argv[1])
