"""A suggest step's request to the storage proxy's suggest service (kubetune.suggest_service).

The service asks in the proxy's warm process, so the step reads nothing of the study itself. A proxy
that is away (restarting, not ready yet) is waited out like every storage call through it
(``KUBETUNE_DB_RETRY_SECONDS``); if it restarted after asking but before answering, the trial it
asked beats no more and goes stale, and Optuna's stale-trial retry asks it again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from kubetune import grpc_storage
from kubetune.spec import Experiment
from kubetune.storage import StudyError, outage_retryer, outage_seconds

__all__ = ["METHOD", "TIMEOUT_SECONDS", "decode", "encode", "suggest_port", "suggest_remotely", "suggest_url"]

METHOD = "/kubetune.Suggest/Suggest"
TIMEOUT_SECONDS = 600.0  # a request waits behind every other lane's of the same study; a stuck one ends


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(body: bytes) -> dict[str, Any]:
    return json.loads(body)


def suggest_port(storage_port: int) -> int:
    """Where the proxy's suggest service listens: the port after the storage proxy's."""
    return storage_port + 1


def suggest_url(storage_proxy_url: str) -> str:
    """The suggest service of the proxy at ``grpc://host:port``."""
    host, port = grpc_storage.parse_proxy_url(storage_proxy_url)
    return f"{grpc_storage.SCHEME}{host}:{suggest_port(port)}"


def suggest_remotely(
    storage_proxy_url: str, experiment: Experiment, *, segment: int, slot: int
) -> tuple[int, str | None]:
    """What :func:`kubetune.search.ask_trial` returns, asked by the proxy's suggest service."""
    import grpc

    url = suggest_url(storage_proxy_url)
    # One id for every retry of this request: the service answers a repeat with the trial it already asked.
    request = encode({"spec": experiment.to_json(), "segment": segment, "slot": slot, "request": uuid.uuid4().hex})

    with grpc.insecure_channel(url[len(grpc_storage.SCHEME) :], options=grpc_storage.CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD)
        retryer = outage_retryer(url, outage_seconds(), grpc_storage.is_unavailable, grpc_storage.describe)
        try:
            answer = decode(retryer(call, request, timeout=TIMEOUT_SECONDS))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise StudyError(error.details()) from None
            raise StudyError(
                f"the suggest service at {url} failed ({error.code().name}: {error.details()}); "
                "see the storage proxy's log"
            ) from None
    return int(answer["number"]), answer.get("reason")
