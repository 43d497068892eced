"""Embedded mode: the "Python interpreter" kfp.local starts for each step, which runs the step's KFP executor in
a fork of the warm step server (:mod:`kubetune.stepserver`) instead of a fresh interpreter importing KFP.

kfp.local's SubprocessRunner (without a venv) starts each step as ``sh -c '... python3 -m
kfp.dsl.executor_main ...'`` with ``python3`` replaced by ``sys.executable``; during ``kubetune run`` that is a
launcher script running this module (see :func:`kubetune.stepserver.serving`). It hands the executor's
arguments, environment and output streams to the server and exits with the executor's exit code; killing it
kills the fork, as killing the step process did. Anything else it is started for (no server, other arguments)
runs the real interpreter, named by ``KUBETUNE_PYTHON``, unchanged.
"""

from __future__ import annotations

import os
import socket
import sys

from kubetune.steps import SERVER_ENV, receive_message, send_message

__all__ = ["EXECUTOR", "PYTHON_ENV", "main"]

EXECUTOR = ["-m", "kfp.dsl.executor_main"]
PYTHON_ENV = "KUBETUNE_PYTHON"


def main(argv: list[str]) -> int:
    path, python = os.environ.get(SERVER_ENV), os.environ.get(PYTHON_ENV, sys.executable)
    if argv[: len(EXECUTOR)] != EXECUTOR or not path:
        os.execv(python, [python, *argv])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError:
            os.execv(python, [python, *argv])  # the server is gone: the step runs as kfp.local meant it to
        socket.send_fds(connection, [b"X"], [sys.stdout.fileno(), sys.stderr.fileno()])
        request = {"kind": "executor", "argv": argv[len(EXECUTOR) :], "env": dict(os.environ), "cwd": os.getcwd()}
        send_message(connection, request)
        reply = receive_message(connection)
    return 1 if reply is None else int(reply["exit"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
