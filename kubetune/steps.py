"""Where a pipeline step's body runs: in the step's own process, or in embedded mode's warm step server.

Components call :func:`call` with a core function's name and the experiment spec as JSON. In a
cluster (no ``KUBETUNE_STEP_SERVER`` in the environment) it runs right here. Under ``kubetune run``
the variable names the socket of :mod:`kubetune.stepserver`, which runs the call in a fork of a
process that imported torch, Optuna and MLflow once, instead of this process importing them again.
This module imports nothing heavy, so a step that hands its work over stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import socket
import struct
import sys
from typing import Any

__all__ = ["SERVER_ENV", "StepFailed", "call", "receive_message", "run_here", "send_message"]

SERVER_ENV = "KUBETUNE_STEP_SERVER"
_HEADER = struct.Struct("!I")


class StepFailed(RuntimeError):
    """The step's body raised in the step server; its traceback is already in the step's log."""


def run_here(target: str, experiment_spec: str, kwargs: dict) -> Any:
    """Call ``kubetune.<module>.<function>`` (``target`` is ``"module.function"``) on the parsed spec.

    A dataclass result comes back as a dict, so the caller sees the same value wherever it ran.
    """
    from kubetune.spec import parse_experiment

    module_name, function_name = target.rsplit(".", 1)
    function = getattr(importlib.import_module(f"kubetune.{module_name}"), function_name)
    result = function(parse_experiment(json.loads(experiment_spec)), **kwargs)
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result


def call(target: str, experiment_spec: str, **kwargs: Any) -> Any:
    """Run ``target`` on the experiment with JSON-able ``kwargs``; returns its JSON-able result."""
    path = os.environ.get(SERVER_ENV)
    if not path:
        return run_here(target, experiment_spec, kwargs)
    sys.stdout.flush()
    sys.stderr.flush()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError as error:
            raise StepFailed(
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
        raise StepFailed(
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
