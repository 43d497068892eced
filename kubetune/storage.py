"""The study database: a reconnecting RDB storage, which errors are worth waiting out, and how to say why not.

Every step of a search reopens the study here, so this is where a database that restarts, fails over
or is not up yet is waited out (with tenacity), and where a misconfigured one is reported at once in
one line that carries no password.

Optuna's RDBStorage has no public hook for batching writes or for the liveness of trials that never
beat; the few private parts of Optuna it touches are marked ``Optuna internal`` below (hence the
Optuna minor version pinned in pyproject.toml).

A ``grpc://host:port`` URL opens the study through Optuna's gRPC storage proxy instead
(kubetune.grpc_storage, served by ``python -m kubetune.storage_proxy``): the same waiting and the
same idempotent tells, heartbeats as a trial attribute rather than Optuna's heartbeat table, and no
batched parameter writes. The proxy itself reaches the database through a ReconnectingStorage.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tenacity
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models  # Optuna internal: the trial and heartbeat tables
from optuna.storages._rdb.storage import _create_scoped_session  # Optuna internal: its session per transaction
from optuna.trial import TrialState
from sqlalchemy import event, func, orm
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from kubetune import grpc_storage, optuna_messages, settings
from kubetune.errors import UserError
from kubetune.redaction import redact_url, scrub, url_secrets
from kubetune.retried_methods import STORAGE_CALLS, retry_methods
from kubetune.spec import Experiment

__all__ = [
    "CONNECT_SECONDS_ENV",
    "PERMANENT_MARKERS",
    "RETRY_SECONDS_ENV",
    "ReconnectingStorage",
    "Storage",
    "StudyError",
    "describe_error",
    "engine_kwargs",
    "is_transient",
    "open_database",
    "open_reader",
    "open_storage",
    "outage_retryer",
    "outage_seconds",
]


class StudyError(UserError, RuntimeError):
    """A study that cannot be used as asked (unreachable database, changed search space)."""


# How long a study operation waits out a database that went away (a restart, a failover), and how
# long the first connection of a process waits for a database that is not up yet.
RETRY_SECONDS_ENV = "KUBETUNE_DB_RETRY_SECONDS"
CONNECT_SECONDS_ENV = "KUBETUNE_DB_CONNECT_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_CONNECT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5  # one TCP connection attempt (libpq connect_timeout)
# Backoff between attempts: doubles from the first value up to the cap, with +-20% jitter.
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.05, 1.0
# Errors that will not go away by waiting: a wrong password, a missing database or role, an unknown host.
PERMANENT_MARKERS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "could not translate host name",
    "failed to resolve host",
    "name or service not known",
    "nodename nor servname",
    "invalid dsn",
    "invalid connection option",
    "permission denied",
    "authentication failed",
    # A full disk or a read-only file does not heal by waiting: say so at once instead of retrying.
    "database or disk is full",
    "attempt to write a readonly database",
    "no space left on device",
    "could not extend file",
)
DRIVERS = ("psycopg", "psycopg2", "sqlite3")
# What creating a storage raises for a bad URL, a missing driver or an unreachable database.
_OPEN_ERRORS = (SQLAlchemyError, OSError, ImportError, ValueError)

_log = logging.getLogger(__name__)
optuna_messages.quiet()


def outage_seconds() -> float:
    """How long a storage call waits out an unreachable store (``KUBETUNE_DB_RETRY_SECONDS``)."""
    return _seconds_setting(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)


def _seconds_setting(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StudyError(f"{name} must be a number of seconds, at least 0, but got {raw!r}")
    return value


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def is_transient(error: BaseException) -> bool:
    """True for a database that is away for now (refused, reset, restarting, locked), not misconfigured."""
    transient = False
    for link in _error_chain(error):
        if isinstance(link, DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, (OperationalError, InterfaceError)) or type(link).__name__ in (
            "OperationalError",
            "InterfaceError",  # psycopg, psycopg2, sqlite3 themselves
        ):
            transient = True
    if not transient:
        return False
    text = " ".join(str(link) for link in _error_chain(error)).lower()
    return not any(marker in text for marker in PERMANENT_MARKERS)


def describe_error(error: BaseException, url: str) -> str:
    """The innermost database error on one line, without the URL's credentials; the caller ends the sentence."""
    links = list(_error_chain(error))
    innermost = next((link for link in links if type(link).__module__.split(".")[0] in DRIVERS), links[-1])
    text = " ".join(str(innermost).split())[:300].rstrip(" .?")
    return f"{type(innermost).__name__}: {scrub(text, *url_secrets(url))}"


def _backoff(seconds: float) -> Callable[[tenacity.RetryCallState], float]:
    """Doubling waits with jitter (lanes waiting out one outage spread out), never past ``seconds`` in all."""
    doubling = tenacity.wait_exponential(multiplier=FIRST_BACKOFF_SECONDS, max=MAX_BACKOFF_SECONDS)

    def wait(state: tenacity.RetryCallState) -> float:
        left = max(0.0, seconds - (state.seconds_since_start or 0.0))
        return min(doubling(state) * random.uniform(0.8, 1.2), left)

    return wait


def _failure(state: tenacity.RetryCallState) -> BaseException:
    """The error of the attempt that just failed (tenacity calls back only after a failed attempt)."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None:
        raise RuntimeError("tenacity called back without a failed attempt")
    return error


def _retrying(seconds: float, retry: Callable[[BaseException], bool], **options: Any) -> tenacity.Retrying:
    """Retry errors that ``retry`` accepts for up to ``seconds``; any other error passes through at once."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry),
        stop=tenacity.stop_after_delay(seconds),
        wait=_backoff(seconds),
        **options,
    )


class ReconnectingStorage(RDBStorage):
    """An RDBStorage whose calls wait out a database outage instead of failing the step.

    A call that fails because the database is unreachable (refused, reset, restarting) is retried
    with backoff for up to ``retry_seconds``; a fresh pooled connection is pre-pinged, so the first
    call after the database is back succeeds. Other errors pass through at once. Only the outermost
    call retries (storage methods call each other). Heartbeats are not retried: a beat during an
    outage fails at once (or after one connection timeout) and the heartbeat thread beats again at
    its next interval, so a trainer never waits on the database to beat or to stop beating.

    A retried write is safe: a tell that had committed before the connection broke is refused as
    already finished (``tell_once`` treats that as told); a trial created twice leaves a RUNNING
    trial that never beats, which ``ensure_study`` fails as stale a grace period after its start.

    Parameter writes are batched: Optuna writes each suggested parameter in its own transaction (a
    commit, and with PostgreSQL's default durability a disk flush, per parameter). Here they wait in
    the process until its next call to the database of any kind, which first writes them all in one
    transaction. Every read and every other write of this process therefore sees them, and a tell
    always stores a trial's parameters before its state. Other processes see a trial's parameters once
    its ask is done (the suggest step then writes the trial's attributes) instead of one by one while
    it samples. An error a parameter write would raise (a finished trial, an incompatible
    distribution) is raised by that next call.
    """

    # Optuna internal: the private methods among these are the ones Optuna's cache wrapper calls.
    RETRIED = (
        *STORAGE_CALLS,
        "get_trial_user_attrs",
        "get_trial_system_attrs",
        "_create_new_trial",
        "get_trial_param",
        "get_trial_id_from_study_id_trial_number",
        "get_best_trial",
        "_get_best_trial_id",
    )

    def __init__(self, url: str, *, retry_seconds: float, batch_params: bool = True, **kwargs: Any) -> None:
        self.retry_seconds = retry_seconds
        self.batch_params = batch_params
        super().__init__(url, **kwargs)
        self._lock_before_state_changes()

    def __getstate__(self) -> dict:
        self._flush_params()
        state = super().__getstate__()
        for key in ("_calls", "_params", "_params_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock_before_state_changes()
        self._params_lock = threading.Lock()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Optuna's, retried; on SQLite its transaction takes the write lock before it reads the trial."""
        calls = self._call_depth()
        calls.lock_first = True
        try:
            return self._retried(RDBStorage.set_trial_state_values, trial_id, state, values)
        finally:
            calls.lock_first = False

    def _lock_before_state_changes(self) -> None:
        """On SQLite, begin a state change's transaction with ``BEGIN IMMEDIATE`` (the write lock first).

        Optuna reads a trial's state, checks it and writes the new one in one transaction, relying on
        ``SELECT ... FOR UPDATE``, which SQLite ignores; Python's sqlite3 also begins a transaction only
        at the first write. Two embedded lanes asking at once could then both pop the same enqueued trial
        (a warm start's pick, a retried trial) and train it twice, and two tells of one trial could both
        write. Only state changes take the lock first: every read doing so measurably slowed lanes down.
        """
        if self.engine.dialect.name != "sqlite":
            return

        @event.listens_for(self.engine, "begin")
        def _lock_first(connection: Any) -> None:
            if getattr(self._call_depth(), "lock_first", False):
                connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _get_trials(self, *args: Any, **kwargs: Any) -> Any:
        """Optuna's bulk read of trials (Optuna internal: its cache wrapper's one read), with the cyclic GC paused.

        A read builds every trial's objects at once, and the collector would walk the growing heap
        again and again meanwhile. Afterwards the heap is frozen: Optuna keeps finished trials cached
        for the process's life, and every later full collection would walk that history again. Cyclic
        garbage (the read's SQLAlchemy sessions and rows) is collected first, since frozen it would
        never be freed; that collection walks only what is not frozen yet, the objects made since the
        last read. Measured in benchmarks/study_throughput.py; see benchmarks/README.md.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._retried(RDBStorage._get_trials, *args, **kwargs)
        finally:
            gc.collect()
            gc.freeze()
            if paused:
                gc.enable()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, and running trials that never beat once the grace period since their start passed.

        Optuna internal: the hook ``optuna.storages.fail_stale_trials`` calls. Optuna skips a trial
        without a heartbeat, so a trial created twice by a retried write, or one whose step died between
        ask() and its first beat, would stay RUNNING and hold a budget slot.
        """
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)  # Optuna's default grace
        return [trial_id for trial_id, idle in self.idle_seconds(study_id).items() if idle > grace]

    def idle_seconds(self, study_id: int) -> dict[int, float]:
        """Seconds since each running trial of the study last beat, or since it started if it never beat."""
        return self._retried(ReconnectingStorage._read_idle_seconds, study_id)

    def _read_idle_seconds(self, study_id: int) -> dict[int, float]:
        # Heartbeats are stamped by the database's clock, start times by the asking process's (Optuna's way).
        # Optuna internal: its tables, read as its own _get_stale_trial_ids reads them.
        with _create_scoped_session(self.scoped_session) as session:
            database_now = session.execute(func.now()).scalar_one().replace(tzinfo=None)
            local_now = dt.datetime.now()
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .all()
            )
            return {
                int(trial.trial_id): (
                    (database_now - trial.heartbeats[0].heartbeat)
                    if trial.heartbeats
                    else (local_now - (trial.datetime_start or local_now))
                ).total_seconds()
                for trial in running
            }

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any
    ) -> None:
        # Optuna internal: the method its cache wrapper calls for every suggested parameter.
        with self._lock_params():
            self.__dict__.setdefault("_params", []).append(
                (trial_id, param_name, param_value_internal, distribution, previous)
            )
        if not self.batch_params:
            self._retried(ReconnectingStorage._flush_params)

    def _lock_params(self) -> threading.Lock:
        lock = self.__dict__.get("_params_lock")
        return lock if lock is not None else self.__dict__.setdefault("_params_lock", threading.Lock())

    def _flush_params(self) -> None:
        """Write the waiting parameters in one transaction, each with Optuna's own checks and write."""
        with self._lock_params():
            pending = self.__dict__.get("_params")
            if not pending:
                return
            try:
                # Optuna internal: the write of one parameter inside a transaction, which
                # set_trial_param commits on its own; called here once per parameter, committed once.
                with _create_scoped_session(self.scoped_session, True) as session:
                    for trial_id, name, value, distribution, previous in pending:
                        self._set_trial_param_without_commit(session, trial_id, name, value, distribution, previous)
            except Exception as error:
                if not is_transient(error):
                    pending.clear()  # they can never be written; the error says why
                raise
            # Written (or, after a retry whose first commit had gone through, already there).
            pending.clear()

    def _call_depth(self) -> threading.local:
        calls = self.__dict__.get("_calls")
        if calls is None:
            calls = self.__dict__.setdefault("_calls", threading.local())
        return calls

    def _retried(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method`` with this storage's retries, unless it is called by another storage method."""
        calls = self._call_depth()
        if getattr(calls, "depth", 0):
            return method(self, *args, **kwargs)
        calls.depth = 1
        try:
            return self._retryer()(self._flushed_call, method, *args, **kwargs)
        finally:
            calls.depth = 0

    def _flushed_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._flush_params()
        return method(self, *args, **kwargs)

    def _retryer(self) -> tenacity.Retrying:
        return outage_retryer(self.url, self.retry_seconds, is_transient, lambda error: describe_error(error, self.url))


def outage_retryer(
    url: str, seconds: float, retry: Callable[[BaseException], bool], describe: Callable[[BaseException], str]
) -> tenacity.Retrying:
    """Wait out an unreachable study store (``retry`` says which errors), warning once, then one clear StudyError."""

    def warn(state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:
            _log.warning(
                "study database %s unreachable (%s); retrying for up to %g s",
                redact_url(url),
                describe(_failure(state)),
                seconds,
            )

    def give_up(state: tenacity.RetryCallState) -> None:
        raise StudyError(
            f"the study database {redact_url(url)} did not answer for {seconds:g} s "
            f"({describe(_failure(state))}). Check that it is up; "
            f"{RETRY_SECONDS_ENV} sets how long to wait."
        ) from None

    return _retrying(seconds, retry, before_sleep=warn, retry_error_callback=give_up)


retry_methods(ReconnectingStorage, RDBStorage, ReconnectingStorage.RETRIED)


def engine_kwargs(url: str) -> dict:
    """Pre-ping pooled connections (a restarted server leaves dead ones); a small pool per process."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
        return kwargs
    kwargs.update(pool_size=2, max_overflow=2, pool_recycle=300, pool_timeout=60)
    try:
        query: Any = make_url(url).query
    except (ArgumentError, ValueError):
        query = {}
    if url.startswith("postgresql") and "connect_timeout" not in query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return kwargs


# What a study is opened with: the database directly, or through the storage proxy (grpc://).
Storage = ReconnectingStorage | grpc_storage.ProxiedStorage

# One storage (one engine, one bounded connection pool) per database and settings in a process: a
# step opens the study several times, and a new engine each time would grow the connections.
_STORAGES: dict[tuple, Storage] = {}
_STORAGES_LOCK = threading.Lock()


def _worth_waiting(error: BaseException) -> bool:
    """A database not up yet, or another process creating the tables at the same moment."""
    return isinstance(error, _OPEN_ERRORS) and ("already exists" in str(error) or is_transient(error))


def _open_proxy(
    url: str, heartbeat_seconds: int | None, retries: int, retry_seconds: float
) -> grpc_storage.ProxiedStorage:
    """The study through the storage proxy at ``grpc://host:port`` (see kubetune.grpc_storage for what differs).

    ``heartbeat_seconds`` None: a reader, which never beats nor fails stale trials.
    """
    try:
        return grpc_storage.ProxiedStorage(
            url,
            retryer=lambda: outage_retryer(url, retry_seconds, grpc_storage.is_unavailable, grpc_storage.describe),
            heartbeat_interval=heartbeat_seconds,
            grace_period=None if heartbeat_seconds is None else 3 * heartbeat_seconds,
            stale_trial_callback=None if heartbeat_seconds is None else RetryHeartbeatStaleTrialCallback(retries),
        )
    except ValueError as error:
        raise StudyError(str(error)) from None


def open_reader(url: str | None = None) -> str | grpc_storage.ProxiedStorage:
    """What a command that only reads studies opens: the storage URL, or a proxy client for ``grpc://``."""
    url = url or settings.storage_url()
    if not url.startswith(grpc_storage.SCHEME):
        return url
    return _open_proxy(url, None, 0, outage_seconds())


def open_storage(experiment: Experiment, url: str | None = None) -> Storage:
    """The RDB storage with heartbeats, stale-trial retries and connections that survive a DB restart.

    Storages are shared within a process (keyed by URL and heartbeat settings), so the process keeps
    one small connection pool (pre-pinged, at most 4 connections to PostgreSQL) however often the
    study is opened.

    The first connection waits up to ``KUBETUNE_DB_CONNECT_SECONDS`` (default 10) for a database that
    refuses connections (one starting up); later calls wait up to ``KUBETUNE_DB_RETRY_SECONDS``
    (default 60) for one that went away. A wrong password, database or host fails at once.
    """
    url = url or settings.storage_url()
    heartbeat_seconds = experiment.spec.trial.heartbeat_seconds
    retries = experiment.spec.trial.retries
    retry_seconds = outage_seconds()
    key = (os.getpid(), url, heartbeat_seconds, retries, retry_seconds)
    with _STORAGES_LOCK:
        if key in _STORAGES:
            return _STORAGES[key]
    storage: Storage
    if url.startswith(grpc_storage.SCHEME):
        storage = _open_proxy(url, heartbeat_seconds, retries, retry_seconds)
        with _STORAGES_LOCK:
            return _STORAGES.setdefault(key, storage)
    storage = open_database(
        url,
        heartbeat_interval=heartbeat_seconds,
        grace_period=3 * heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
    )
    with _STORAGES_LOCK:
        return _STORAGES.setdefault(key, storage)


def open_database(url: str, **options: Any) -> ReconnectingStorage:
    """A new ReconnectingStorage on ``url`` (a database, not a proxy), waiting for one that is starting up.

    ``options``: RDBStorage's heartbeat options, ``batch_params`` (see ReconnectingStorage).
    """
    retry_seconds = outage_seconds()
    connect_seconds = _seconds_setting(CONNECT_SECONDS_ENV, DEFAULT_CONNECT_SECONDS)
    try:
        return _retrying(connect_seconds, _worth_waiting, reraise=True)(
            ReconnectingStorage, url, retry_seconds=retry_seconds, engine_kwargs=engine_kwargs(url), **options
        )
    except _OPEN_ERRORS as error:
        raise StudyError(
            f"cannot open the study database {redact_url(url)}: {describe_error(error, url)}. "
            "Check KUBETUNE_STORAGE (driver, host, port, database, user, password) and that the database is up."
        ) from None
