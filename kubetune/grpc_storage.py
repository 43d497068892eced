"""The study through Optuna's gRPC storage proxy (``grpc://host:port``): reconnecting, with heartbeats.

Many trial pods reading one study straight from PostgreSQL each read the whole study, and the
database slows down as it grows (optuna#3053). Optuna's proxy (``kubetune.storage_proxy``) keeps the
study in memory and each client reads only the trials that changed since its last read.

What differs from the direct storage (kubetune.storage.ReconnectingStorage):

- Waiting: a call that finds the proxy away (gRPC UNAVAILABLE: refused, reset, restarting) is
  retried with the same backoff and deadline (``KUBETUNE_DB_RETRY_SECONDS``); a database outage
  behind the proxy is waited out by the proxy's own storage, which is a ReconnectingStorage.
- Heartbeats: Optuna's gRPC API carries no heartbeat, so a beat is the trial's system attribute
  ``kubetune:heartbeat`` (seconds since the epoch, by the beating pod's clock) and a trial's idle
  time is measured against the reading process's clock: the pods' clocks must agree (NTP) to well
  within the grace period. Stale trials are found from public storage reads, not Optuna's tables.
- Parameter writes are not batched: the proxy commits each parameter on its own.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import tenacity
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna internal: what fail_stale_trials checks for
from optuna.trial import FrozenTrial, TrialState

from kubetune.retried_methods import STORAGE_CALLS, retry_methods

__all__ = ["HEARTBEAT_ATTR", "ProxiedStorage", "describe", "is_unavailable", "parse_proxy_url"]

HEARTBEAT_ATTR = "kubetune:heartbeat"
SCHEME = "grpc://"
# gRPC's own reconnection backoff grows to two minutes; a restarted proxy should be found within a second.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def parse_proxy_url(url: str) -> tuple[str, int]:
    """Host and port of ``grpc://host:port``; a ValueError naming the fix otherwise."""
    rest = url[len(SCHEME) :].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not url.startswith(SCHEME) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"KUBETUNE_STORAGE {url!r} is not a storage proxy address: write grpc://HOST:PORT, "
            "for example grpc://kubetune-storage-proxy:13000"
        )
    return host, int(port)


def describe(error: BaseException) -> str:
    """A gRPC error's status code, for messages (its details may be long)."""
    return f"gRPC {error.code().name}" if hasattr(error, "code") else type(error).__name__


def is_unavailable(error: BaseException) -> bool:
    """True for a proxy that is away for now (not started, restarting, connection reset)."""
    import grpc

    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


class ProxiedStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client whose calls wait out a restarting proxy, with kubetune's heartbeats.

    ``retryer`` makes the retry policy of one call (kubetune.storage owns it: backoff, deadline, messages).
    """

    RETRIED = (*STORAGE_CALLS, "set_trial_param")  # parameters are written at once, not batched

    def __init__(
        self,
        url: str,
        *,
        retryer: Callable[[], tenacity.Retrying],
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        stale_trial_callback: Callable[..., None] | None = None,
    ) -> None:
        self.url = url
        self.retryer = retryer
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback
        self._trial_ids: dict[tuple[int, int], int] = {}
        host, port = parse_proxy_url(url)
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        # Optuna internal: the client's channel set-up, here with a short reconnection backoff.
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # Optuna internal: the client stub
        from optuna.storages._grpc.client import GrpcClientCache  # Optuna internal: its incremental trial cache

        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=CHANNEL_OPTIONS)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def _retried(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.retryer()(method, self, *args, **kwargs)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        """Remembered: a trial's id never changes, and a heartbeat of a known trial then needs one call only."""
        key = (study_id, trial_number)
        if key not in self._trial_ids:
            method = GrpcStorageProxy.get_trial_id_from_study_id_trial_number
            self._trial_ids[key] = self._retried(method, study_id, trial_number)
        return self._trial_ids[key]

    # Heartbeats (BaseHeartbeat), over public storage calls.

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat, not retried: a beat during an outage fails at once and the next one tries again."""
        GrpcStorageProxy.set_trial_system_attr(self, trial_id, HEARTBEAT_ATTR, time.time())

    def idle_seconds(self, study_id: int) -> dict[int, float]:
        """Seconds since each running trial of the study last beat, or since it started if it never beat."""
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return {trial._trial_id: _idle(trial) for trial in running}

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)  # Optuna's default grace
        return [trial_id for trial_id, idle in self.idle_seconds(study_id).items() if idle > grace]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
        return self.stale_trial_callback


def _idle(trial: FrozenTrial) -> float:
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return time.time() - float(beat)
    start = trial.datetime_start or dt.datetime.now()  # Optuna's naive local start time
    return (dt.datetime.now() - start).total_seconds()


retry_methods(ProxiedStorage, GrpcStorageProxy, ProxiedStorage.RETRIED)
