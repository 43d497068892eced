"""Where a pipeline step's body runs: in the step's own process, or in embedded mode's warm step server.

Components call :func:`call` with a core function's name and the experiment spec as JSON. In a
cluster (no ``KUBETUNE_STEP_SERVER`` in the environment) it runs right here. Under ``kubetune run``
the variable names the socket of :mod:`kubetune.stepserver`, which runs the call in a fork of a
process that imported torch, Optuna and MLflow once, instead of this process importing them again.
This module imports nothing heavy, so a step that hands its work over stays cheap.

Under ``kubetune run`` a step also tells the runner, as data, what it has to know: a failure
(``{type, user_error, message}`` with the step and trial) and, from the exit step, the segment to start
next. ``KUBETUNE_RUNNER_INBOX`` names the file, which each step appends one JSON line to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import socket
import struct
import sys
from typing import Any

from kubetune.errors import UserError

__all__ = [
    "INBOX_ENV",
    "SERVER_ENV",
    "StepFailed",
    "call",
    "failure",
    "receive_message",
    "run_here",
    "send_message",
    "tell_runner",
]

SERVER_ENV = "KUBETUNE_STEP_SERVER"
INBOX_ENV = "KUBETUNE_RUNNER_INBOX"
_HEADER = struct.Struct("!I")


def failure(error: BaseException) -> dict[str, Any]:
    """What the local runner needs to know of an error a step ended with, as JSON-able data."""
    return {"type": type(error).__qualname__, "user_error": isinstance(error, UserError), "message": str(error)}


class StepFailed(RuntimeError):
    """The step's body raised in the step server (its traceback is already in the step's log), or the server
    could not be reached; ``failure`` says how, as :func:`failure` does for an error raised here."""

    def __init__(self, failed: dict[str, Any]) -> None:
        super().__init__(f"{failed['type']}: {failed['message']}")
        self.failure = failed

    @classmethod
    def unreachable(cls, message: str) -> StepFailed:
        return cls({"type": cls.__qualname__, "user_error": False, "message": message})


def run_here(target: str, experiment_spec: str, kwargs: dict) -> Any:
    """Call ``kubetune.<module>.<function>`` (``target`` is ``"module.function"``) on the parsed spec.

    A dataclass result comes back as a dict, so the caller sees the same value wherever it ran.
    """
    from kubetune.spec import parse_experiment

    module_name, function_name = target.rsplit(".", 1)
    function = getattr(importlib.import_module(f"kubetune.{module_name}"), function_name)
    result = function(parse_experiment(json.loads(experiment_spec)), **kwargs)
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) and not isinstance(result, type) else result


def call(target: str, experiment_spec: str, *, step: str, **kwargs: Any) -> Any:
    """Run ``target`` on the experiment with JSON-able ``kwargs``; returns its JSON-able result.

    ``step`` is the pipeline task's name: when the call fails, the runner's inbox gets the failure with
    it and the trial (``number``) where there is one, and the error is raised here as well.
    """
    try:
        path = os.environ.get(SERVER_ENV)
        return (
            _call_server(path, target, experiment_spec, kwargs) if path else run_here(target, experiment_spec, kwargs)
        )
    except BaseException as error:
        failed = error.failure if isinstance(error, StepFailed) else failure(error)
        with contextlib.suppress(OSError):  # an inbox that cannot be written must not hide the step's error
            tell_runner({"kind": "failure", "step": step, "trial": kwargs.get("number"), **failed})
        raise


def tell_runner(record: dict[str, Any]) -> None:
    """Append ``record`` to the local runner's inbox; nothing when no runner waits (in a cluster)."""
    path = os.environ.get(INBOX_ENV)
    if not path:
        return
    line = (json.dumps(record) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)  # one write to an O_APPEND file: lanes that fail at once do not interleave
    finally:
        os.close(descriptor)


def _call_server(path: str, target: str, experiment_spec: str, kwargs: dict[str, Any]) -> Any:
    sys.stdout.flush()
    sys.stderr.flush()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError as error:
            raise StepFailed.unreachable(
                f"the step server at {path} is not answering ({error.strerror or error}); "
                "see step-server.log in the logs folder of the kubetune home"
            ) from None
        request = {
            "target": target,
            "experiment_spec": experiment_spec,
            "kwargs": kwargs,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
        }
        # The fork writes to this step's own stdout and stderr, so its output lands in the step's log.
        socket.send_fds(connection, [b"F"], [sys.stdout.fileno(), sys.stderr.fileno()])
        send_message(connection, request)
        reply = receive_message(connection)
    if reply is None:
        raise StepFailed.unreachable(
            f"the step server at {path} closed the connection before answering; "
            "see step-server.log in the logs folder of the kubetune home"
        )
    if "error" in reply:
        raise StepFailed(reply["error"])
    return reply["result"]


def send_message(connection: socket.socket, message: dict) -> None:
    """Send one length-prefixed JSON message."""
    body = json.dumps(message).encode()
    connection.sendall(_HEADER.pack(len(body)) + body)


def receive_message(connection: socket.socket) -> dict | None:
    """Read one length-prefixed JSON message; None when the peer closed before sending all of it."""
    header = connection.recv(_HEADER.size, socket.MSG_WAITALL)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = connection.recv(size, socket.MSG_WAITALL) if size else b""
    return json.loads(body) if len(body) == size else None
