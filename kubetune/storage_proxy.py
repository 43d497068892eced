"""``python -m kubetune.storage_proxy``: Optuna's gRPC storage proxy in front of the study database.

Many trial pods reading one study straight from PostgreSQL each read the whole study, and the
database slows down as the study grows (optuna#3053); the proxy keeps the study in memory and serves
each client only what changed. The database URL comes from ``KUBETUNE_STORAGE`` (the Secret); steps
then use ``KUBETUNE_STORAGE=grpc://<service>:<port>``. The port opens only once the database answered,
so a TCP readinessProbe says the proxy can serve. SIGTERM lets calls in flight finish first.

On the next port (``--port`` + 1) the same process serves kubetune's suggest steps
(kubetune.suggest_service): it asks the study for them, warm, so a step reads nothing of the study.
When either port is taken, the proxy says which and exits with code 2 before serving on either.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

import optuna

from kubetune import grpc_storage
from kubetune.errors import UserError
from kubetune.ports import bind_error
from kubetune.redaction import redact_url
from kubetune.storage import open_database
from kubetune.suggest_client import suggest_port
from kubetune.suggest_service import Suggester, start_suggest_service

__all__ = ["DEFAULT_PORT", "main", "serve"]

DEFAULT_PORT = 13000
STOP_GRACE_SECONDS = 10.0

_log = logging.getLogger("kubetune.storage_proxy")


def _database_url() -> str:
    url = os.environ.get("KUBETUNE_STORAGE", "")
    if not url or url.startswith(grpc_storage.SCHEME) or url.startswith("sqlite"):
        shown = redact_url(url) if url else "(not set)"
        raise UserError(
            f"KUBETUNE_STORAGE must be the PostgreSQL (or MySQL) URL of the study database, but is {shown}; "
            "set it from the kubetune Secret, e.g. postgresql+psycopg://user:***@postgres:5432/optuna"
        )
    return url


def _bindable(host: str, port: int, storage_port: int) -> int:
    """``port``, after checking it can be bound: gRPC would only say "Failed to bind", in a traceback."""
    error = bind_error(host, port)
    if error is not None:
        raise UserError(
            f"--port {storage_port}: the proxy listens on {host}:{storage_port} and, for the suggest service, "
            f"on the next port, but cannot listen on {host}:{port} ({error}); stop what listens "
            "there or choose a --port whose next port is free too"
        )
    return port


def serve(url: str, host: str, port: int) -> None:
    """Serve the study database at ``url`` on ``host:port`` until SIGTERM or SIGINT."""
    from optuna.storages._grpc.server import make_server  # Optuna internal: run_grpc_proxy_server without its wait

    storage = optuna.storages.get_storage(
        open_database(url, batch_params=False)
    )  # with Optuna's in-process trial cache
    storage.get_all_studies()  # the database answers (waited out if it is starting) before the port opens
    # The suggest service first: it asks on `storage` itself, not through the port below, and the storage
    # port, which the readinessProbe checks, then opens only once both ports are bound.
    suggester = start_suggest_service(Suggester(storage), host, _bindable(host, suggest_port(port), port))
    try:
        server = make_server(storage, host, _bindable(host, port, port))
    except UserError:
        suggester.stop(None)
        raise
    server.start()
    _log.info("kubetune storage proxy serving %s on %s:%d", redact_url(url), host, port)
    _log.info("kubetune suggest service on %s:%d", host, suggest_port(port))

    def stop(signum: int, frame: FrameType | None) -> None:
        suggester.stop(STOP_GRACE_SECONDS)
        server.stop(STOP_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.storage_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve(_database_url(), options.host, options.port)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
