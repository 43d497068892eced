"""The storage proxy's suggest service: a warm process asks the study for every trial pod.

A suggest step in a fresh process reads the whole study before it can ask (seconds at 10,000 trials,
more than a minute at 100,000: benchmarks/README.md), and a process that keeps no copy of the study
cannot start warm. The proxy's process keeps one: on the port after the storage port it runs the
suggest step's body (:func:`kubetune.search.ask_trial`) for a step and answers the trial's number.

It asks on the proxy's own storage (Optuna's in-process cache in front of kubetune's reconnecting
database storage), so it sees every write the proxy served at once and reads from the database only
the trials that changed; through the proxy's gRPC API instead, each read would make the proxy scan the
whole study (benchmarks/README.md). Its first heartbeat of a trial goes to the database's heartbeat
table; clients of the proxy measure a trial's idle time from its start until its trainer beats, which
is the same moment. It keeps one study and sampler per experiment spec (one sampler draws every lane's
trials, seeded by ``strategy.sampler.seed``, and remembers what it learnt of the study), and asks for
one request at a time per study, on a gRPC server of its own so that suggests waiting for their study
never hold the storage server's threads.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from kubetune import suggest_client
from kubetune.errors import UserError

if TYPE_CHECKING:
    import grpc
    import optuna
    from optuna.storages import BaseStorage

    from kubetune.spec import Experiment

__all__ = ["REQUEST_ATTR", "STUDIES_KEPT", "Suggester", "start_suggest_service"]

REQUEST_ATTR = "kubetune:suggest_request"  # on each trial the service asks: the request it answers
STUDIES_KEPT = 32  # studies whose samplers stay warm; the least recently asked one is dropped first
WORKERS = 16  # requests in progress at once (those for one study wait for each other)

_log = logging.getLogger("kubetune.suggest_service")


class Suggester:
    """One warm study per experiment spec, on ``storage``: the proxy's (see the module's docstring)."""

    def __init__(self, storage: BaseStorage) -> None:
        self._storage = storage
        self._studies: collections.OrderedDict[str, tuple[threading.Lock, optuna.Study]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def suggest(self, experiment_spec: str, *, segment: int, slot: int, request: str) -> tuple[int, str | None]:
        """The suggest step's body on this process's warm study: what kubetune.search.ask_trial returns.

        A repeated ``request`` (the step retried it after losing the answer: a proxy restart, say) gets
        the trial asked for it the first time, its recording finished, instead of a second trial.
        """
        from kubetune.search import ask_trial, record_trial
        from kubetune.spec import parse_experiment
        from kubetune.study import running_trial_tagged

        experiment = parse_experiment(json.loads(experiment_spec))
        lock, study = self._study(experiment_spec, experiment)
        with lock:
            asked = running_trial_tagged(study, REQUEST_ATTR, request)
            if asked is not None:
                return record_trial(study, asked, experiment, segment=segment, slot=slot), None
            return ask_trial(study, experiment, segment=segment, slot=slot, tags={REQUEST_ATTR: request})

    def _study(self, key: str, experiment: Experiment) -> tuple[threading.Lock, optuna.Study]:
        from kubetune.study import load_study

        with self._lock:
            if key in self._studies:
                self._studies.move_to_end(key)
                return self._studies[key]
        study = load_study(experiment, storage=self._storage)
        with self._lock:
            entry = self._studies.setdefault(key, (threading.Lock(), study))
            while len(self._studies) > STUDIES_KEPT:
                self._studies.popitem(last=False)
            return entry

    def forget(self, experiment_spec: str) -> None:
        """Drop a study that no longer answers as it did (deleted and created again, say)."""
        with self._lock:
            self._studies.pop(experiment_spec, None)


def start_suggest_service(suggester: Suggester, host: str, port: int) -> grpc.Server:
    """A started gRPC server on ``host:port`` answering suggest requests with ``suggester``.

    A request is ``{"spec", "segment", "slot", "request"}`` (an id the step keeps across retries) as JSON; the answer ``{"number", "reason"}``. An error the user
    must fix (no such study, say) comes back as FAILED_PRECONDITION with its message, anything else as
    INTERNAL, after dropping the study, so the next request opens it afresh.
    """
    import grpc

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        message = suggest_client.decode(request)
        spec = message["spec"]
        try:
            number, reason = suggester.suggest(
                spec, segment=int(message["segment"]), slot=int(message["slot"]), request=str(message["request"])
            )
        except UserError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except Exception as error:  # noqa: BLE001 - the step shows it; the service goes on serving others
            _log.exception("suggest failed")
            suggester.forget(spec)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        return suggest_client.encode({"number": number, "reason": reason})

    service, method = suggest_client.METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(handle)})
    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS), handlers=[handler])
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server
