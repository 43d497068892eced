"""The study: the only state of an experiment, shared by every step through the database.

Steps pass trial *numbers*; each step reopens the study, so any step can be re-run or resumed.
Heartbeats are recorded by the trainer itself (Optuna's own heartbeat only runs inside optimize()),
and `ensure_study` fails the stale trials, which Optuna's retry callback re-enqueues.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import gc
import hashlib
import importlib.metadata
import logging
import os
import platform
import random
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.samplers._tpe import sampler as _tpe
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kubetune import settings
from kubetune.errors import UserError
from kubetune.periodic import every
from kubetune.space import grid_points
from kubetune.spec import Experiment

__all__ = [
    "Counts",
    "Decision",
    "StudyError",
    "beat",
    "best_trial",
    "count_trials",
    "decide",
    "ensure_study",
    "get_trial",
    "heartbeat",
    "load_study",
    "open_storage",
    "plan_slots",
    "seconds_until_stale",
    "stop_before_trial",
    "tell_once",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# kubetune records heartbeats itself for ask/tell trials (see `heartbeat`), so Optuna's hint does not apply.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

TRACKED_PACKAGES = ("kubetune", "optuna", "torch", "mlflow", "kfp", "numpy", "scikit-learn")


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

_log = logging.getLogger(__name__)


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
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_transient(error: BaseException) -> bool:
    """True for a database that is away for now (refused, reset, restarting, locked), not misconfigured."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

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


def _summary(error: BaseException, url: str) -> str:
    """The innermost database error on one line, with the password (if any) removed."""
    links = list(_error_chain(error))
    innermost = next(
        (link for link in links if type(link).__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlite3")), links[-1]
    )
    text = " ".join(str(innermost).split())[:300].rstrip(" .?")  # the caller ends the sentence
    return f"{type(innermost).__name__}: {_scrub(text, url)}"


def _scrub(text: str, url: str) -> str:
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text


def _backoff(attempt: int) -> float:
    delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**attempt)
    return delay * random.uniform(0.8, 1.2)


class _ReconnectingStorage(RDBStorage):
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
    commit, and with PostgreSQL's default durability a disk flush, per parameter: about 20 for
    kubetune's architecture space). Here they wait in the process until its next call to the
    database of any kind, which first writes them all in one transaction. Every read and every other
    write of this process therefore sees them, and a tell always stores a trial's parameters before
    its state. Other processes see a trial's parameters once its ask is done (the suggest step then
    writes the trial's attributes) instead of one by one while it samples. An error a parameter
    write would raise (a finished trial, an incompatible distribution) is raised by that next call.
    """

    _RETRIED = (
        "create_new_study",
        "delete_study",
        "set_study_user_attr",
        "set_study_system_attr",
        "get_study_id_from_name",
        "get_study_name_from_id",
        "get_study_directions",
        "get_study_user_attrs",
        "get_study_system_attrs",
        "get_trial_user_attrs",
        "get_trial_system_attrs",
        "get_all_studies",
        "create_new_trial",
        "_create_new_trial",
        "get_trial_param",
        "set_trial_state_values",
        "set_trial_intermediate_value",
        "set_trial_user_attr",
        "set_trial_system_attr",
        "get_trial_id_from_study_id_trial_number",
        "get_trial",
        "get_all_trials",
        "get_best_trial",
        "_get_best_trial_id",
    )

    def __init__(self, url: str, *, retry_seconds: float, **kwargs) -> None:
        self.retry_seconds = retry_seconds
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict:
        self._flush_params()
        state = super().__getstate__()
        for key in ("_calls", "_params", "_params_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._params_lock = threading.Lock()

    def _get_trials(self, *args, **kwargs):
        """Optuna's bulk read of trials, with the cyclic garbage collector paused while it runs.

        Reading a study builds every trial's objects at once (about 200 per trial in kubetune's
        architecture space); CPython's collector then walks the growing heap again and again, which
        doubled the read of 5,000 trials (3.8 s against 1.8 s). Afterwards the heap is frozen: Optuna
        keeps finished trials cached for the process's life, and without the freeze every later full
        collection walks that history again (a 400 ms p99 for ask+tell at 5,000 trials, 115 ms with it).
        Frozen objects are freed by reference counting only, so cyclic garbage (the read's SQLAlchemy
        sessions and rows) is collected first: frozen, it would never be freed, and a runner polling
        the study every second grew by about 14 KB per poll. That collection walks only what is not
        frozen yet, the objects made since the last read.
        """
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._retrying(RDBStorage._get_trials, *args, **kwargs)
        finally:
            gc.collect()
            gc.freeze()
            if paused:
                gc.enable()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, and running trials that never beat once the grace period since their start passed.

        Optuna skips a trial without a heartbeat, so a trial created twice by a retried write, or one
        whose step died between ask() and its first beat, would stay RUNNING and hold a budget slot.
        """
        return [trial_id for trial_id, idle in self.idle_seconds(study_id).items() if idle > self.grace_period]

    def idle_seconds(self, study_id: int) -> dict[int, float]:
        """Seconds since each running trial of the study last beat, or since it started if it never beat."""
        return self._retrying(_ReconnectingStorage._read_idle_seconds, study_id)

    def _read_idle_seconds(self, study_id: int) -> dict[int, float]:
        # Heartbeats are stamped by the database's clock, start times by the asking process's (Optuna's way).
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import func, orm

        with _create_scoped_session(self.scoped_session) as session:
            database_now = session.execute(func.now()).scalar().replace(tzinfo=None)
            local_now = dt.datetime.now()
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .all()
            )
            return {
                trial.trial_id: (
                    (database_now - trial.heartbeats[0].heartbeat)
                    if trial.heartbeats
                    else (local_now - (trial.datetime_start or local_now))
                ).total_seconds()
                for trial in running
            }

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(self, trial_id, param_name, param_value_internal, distribution, previous_distribution) -> None:
        with self._lock_params():
            self.__dict__.setdefault("_params", []).append(
                (trial_id, param_name, param_value_internal, distribution, previous_distribution)
            )

    def _lock_params(self) -> threading.Lock:
        lock = self.__dict__.get("_params_lock")
        return lock if lock is not None else self.__dict__.setdefault("_params_lock", threading.Lock())

    def _flush_params(self) -> None:
        """Write the waiting parameters in one transaction (Optuna's checks, one trial lookup per trial)."""
        from optuna import distributions
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with self._lock_params():
            pending = self.__dict__.get("_params")
            if not pending:
                return
            try:
                with _create_scoped_session(self.scoped_session, True) as session:
                    study_ids: dict[int, int] = {}
                    for trial_id, name, value, distribution, previous in pending:
                        if trial_id not in study_ids:
                            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                            self.check_trial_is_updatable(trial_id, trial.state)
                            study_ids[trial_id] = trial.study_id
                        if previous is None:
                            record = (
                                session.query(models.TrialParamModel)
                                .join(models.TrialModel)
                                .filter(models.TrialModel.study_id == study_ids[trial_id])
                                .filter(models.TrialParamModel.param_name == name)
                                .first()
                            )
                            if record is not None:
                                previous = distributions.json_to_distribution(record.distribution_json)
                        if previous is not None:
                            distributions.check_distribution_compatibility(previous, distribution)
                        session.add(
                            models.TrialParamModel(
                                trial_id=trial_id,
                                param_name=name,
                                param_value=value,
                                distribution_json=distributions.distribution_to_json(distribution),
                            )
                        )
            except Exception as error:
                if not _is_transient(error):
                    pending.clear()  # they can never be written; the error says why
                raise
            # Written (or, after a retry whose first commit had gone through, already there).
            pending.clear()

    def _call_depth(self) -> threading.local:
        calls = self.__dict__.get("_calls")
        if calls is None:
            calls = self.__dict__.setdefault("_calls", threading.local())
        return calls

    def _retrying(self, method, *args, **kwargs):
        calls = self._call_depth()
        if getattr(calls, "depth", 0):
            return method(self, *args, **kwargs)
        deadline, attempt, warned = None, 0, False
        while True:
            calls.depth = 1
            try:
                self._flush_params()
                return method(self, *args, **kwargs)
            except Exception as error:
                if not _is_transient(error):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.retry_seconds
                if now >= deadline:
                    raise StudyError(
                        f"the study database {settings.redact(self.url)} did not answer for "
                        f"{self.retry_seconds:g} s ({_summary(error, self.url)}). Check that it is up; "
                        f"{RETRY_SECONDS_ENV} sets how long to wait."
                    ) from None
                if not warned:
                    _log.warning(
                        "study database %s unreachable (%s); retrying for up to %g s",
                        settings.redact(self.url),
                        _summary(error, self.url),
                        self.retry_seconds,
                    )
                    warned = True
                time.sleep(min(_backoff(attempt), max(0.0, deadline - now)))
                attempt += 1
            finally:
                calls.depth = 0


def _with_retries(name: str):
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._retrying(method, *args, **kwargs)

    return call


for _name in _ReconnectingStorage._RETRIED:
    setattr(_ReconnectingStorage, _name, _with_retries(_name))


def _engine_kwargs(url: str) -> dict:
    """Pre-ping pooled connections (a restarted server leaves dead ones); a small pool per process."""
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
        return engine_kwargs
    engine_kwargs.update(pool_size=2, max_overflow=2, pool_recycle=300, pool_timeout=60)
    try:
        query = make_url(url).query
    except (ArgumentError, ValueError):
        query = {}
    if url.startswith("postgresql") and "connect_timeout" not in query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return engine_kwargs


# One storage (one engine, one bounded connection pool) per database and settings in a process: a
# step opens the study several times, and a new engine each time would grow the connections.
_STORAGES: dict[tuple, RDBStorage] = {}
_STORAGES_LOCK = threading.Lock()


def open_storage(experiment: Experiment, url: str | None = None) -> RDBStorage:
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
    retry_seconds = _seconds_setting(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)
    key = (os.getpid(), url, heartbeat_seconds, retries, retry_seconds)
    with _STORAGES_LOCK:
        if key in _STORAGES:
            return _STORAGES[key]
    connect_deadline = time.monotonic() + _seconds_setting(CONNECT_SECONDS_ENV, DEFAULT_CONNECT_SECONDS)
    attempt = 0
    while True:
        try:
            storage = _ReconnectingStorage(
                url,
                retry_seconds=retry_seconds,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_seconds,
                grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
            )
            with _STORAGES_LOCK:
                return _STORAGES.setdefault(key, storage)
        except (SQLAlchemyError, OSError, ImportError, ValueError) as error:
            racing = "already exists" in str(error)  # another process created the tables meanwhile
            if (racing or _is_transient(error)) and time.monotonic() < connect_deadline:
                time.sleep(_backoff(attempt))
                attempt += 1
                continue
            raise StudyError(
                f"cannot open the study database {settings.redact(url)}: {_summary(error, url)}. "
                "Check KUBETUNE_STORAGE (driver, host, port, database, user, password) and that the database is up."
            ) from None


_UNSEEN = object()
_UNSET = object()


class _GroupsSeenOnce(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition, adding each finished trial once instead of all trials every time.

    A finished trial never changes and adding the same parameter set again leaves the groups as they
    are, so the groups are exactly Optuna's; the cost per trial no longer grows with the study.
    """

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = (TrialState.COMPLETE, TrialState.PRUNED) if self._include_pruned else (TrialState.COMPLETE,)
        with self._lock:
            for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
                if trial.number not in self._seen:
                    self._search_space.add_distributions(trial.distributions)
                    self._seen.add(trial.number)
            return copy.deepcopy(self._search_space)


class _TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE sampler, doing the work its parameter groups share once per trial.

    With ``group=True`` TPE samples each group of parameters that appear together on its own (here:
    the hyperparameters, each architecture block, each conditional kernel size), and for every group
    it read all trials from the database again (constant liar bypasses Optuna's per-trial cache to see
    running trials) and split them into good and bad again. Neither depends on the group: this
    sampler reads and splits once per trial, from the trials as the ask saw them (running ones
    included), and shares that between the groups. The same trials, the same split, the same random
    draws, so it suggests what TPESampler suggests; only a lane that starts within the same
    milliseconds may be seen a group later than before. The group decomposition is incremental (see
    :class:`_GroupsSeenOnce`), and each finished trial's observations are computed once per group.
    Measured in benchmarks/study_throughput.py, which also checks that the suggestions are Optuna's.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _GroupsSeenOnce(True)
        self._shared = threading.local()
        self._rows: dict[tuple, dict[int, tuple | None]] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_shared", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._shared = threading.local()

    def _split(self, study: optuna.Study, trial: FrozenTrial) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        key = (id(study), study._study_id, trial._trial_id)
        if getattr(self._shared, "key", None) != key:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
            if self._constant_liar:
                states.append(TrialState.RUNNING)
            # The per-ask cache: filled after this trial was created, so it holds every trial running then.
            trials = study._get_trials(deepcopy=False, states=states, use_cache=True)
            if self._constant_liar:
                trials = [t for t in trials if t.number != trial.number]
            if self._gamma is None:
                self._gamma = _tpe.default_gamma if len(study.directions) <= 1 else _tpe.default_gamma_multiobjective
            n = sum(t.state != TrialState.RUNNING for t in trials)
            self._shared.split = _tpe._split_trials(study, trials, self._gamma(n))
            self._shared.key = key
        return self._shared.split

    def _get_internal_repr(self, trials: list[FrozenTrial], search_space: dict, study: optuna.Study) -> dict:
        """Optuna's per-group observations, remembering each finished trial's row (it never changes)."""
        names = list(search_space)
        cache = self._rows.setdefault((study._study_id, tuple(search_space.items())), {})
        rows = []
        for trial in trials:
            finished = trial.state.is_finished()
            row = cache.get(trial.number, _UNSEEN) if finished else _UNSEEN
            if row is _UNSEEN:
                params = self._get_params(trial, study)
                row = (
                    tuple(search_space[name].to_internal_repr(params[name]) for name in names)
                    if search_space.keys() <= params.keys()
                    else None
                )
                if finished:
                    cache[trial.number] = row
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
        return {name: np.asarray(column) for name, column in zip(names, columns, strict=True)}

    def _sample(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        below_trials, above_trials = self._split(study, trial)
        mpe_below = self._build_parzen_estimator(study, search_space, below_trials, handle_below=True)
        mpe_above = self._build_parzen_estimator(study, search_space, above_trials, handle_below=False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = optuna.samplers.TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret


def make_sampler(experiment: Experiment, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in the spec; ``seed_offset`` keeps parallel lanes from drawing the same points."""
    spec = experiment.spec
    base = spec.strategy.sampler.seed
    seed = None if base is None else (base + seed_offset) % 2**32  # numpy takes seeds below 2**32
    name = spec.strategy.sampler.name
    startup = max(3, min(10, spec.budget.max_trials // 4))
    if name == "tpe":
        return _TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        # Walks the space as sample() suggests it, so conditional dimensions never multiply the points.
        return optuna.samplers.BruteForceSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.parallel_trials * 2))
    return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(experiment: Experiment) -> optuna.pruners.BasePruner:
    spec = experiment.spec
    pruner = spec.strategy.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
    if pruner.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, max_resource=spec.trial.epochs, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.NopPruner()


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load_study(experiment: Experiment, *, storage: RDBStorage | None = None, seed_offset: int = 0) -> optuna.Study:
    """Open the existing study with the spec's sampler and pruner."""
    try:
        return optuna.load_study(
            study_name=experiment.name,
            storage=storage or open_storage(experiment),
            sampler=make_sampler(experiment, seed_offset=seed_offset),
            pruner=make_pruner(experiment),
        )
    except KeyError:
        raise StudyError(f"study {experiment.name!r} does not exist yet; run the ensure-study step first") from None


def _has_results(study: optuna.Study) -> bool:
    """Whether a trial completed or was pruned: results that a changed search definition would mix with new ones."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _leaves(document: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Every value of a document by its path; a list is one value."""
    if isinstance(document, dict) and document:
        return {leaf: value for key, child in document.items() for leaf, value in _leaves(child, (*path, key)).items()}
    return {path: document}


def _document(leaves: dict[tuple, Any]) -> dict:
    """The document of ``leaves`` (the inverse of _leaves); a section's fields win over an empty value of it."""
    document: dict = {}
    for path, value in leaves.items():
        node = document
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if not isinstance(node.get(path[-1]), dict):
            node[path[-1]] = value
    return document


def _holds(leaves: dict[tuple, Any], prefix: tuple) -> bool:
    """Whether the document has a value at ``prefix`` or under it."""
    return any(p[: len(prefix)] == prefix for p in leaves)


def _shown(leaves: dict[tuple, Any], path: tuple) -> str:
    if path in leaves:
        return repr(leaves[path])
    return "{...}" if _holds(leaves, path) else "unset"


def _section(old: dict[tuple, Any], new: dict[tuple, Any], path: tuple) -> tuple:
    """The outermost part of ``path`` that one spec leaves empty or out (a whole new architecture), else ``path``."""
    return next(
        (
            path[:i]
            for i in range(2, len(path))
            if path[:i] in old or path[:i] in new or not (_holds(old, path[:i]) and _holds(new, path[:i]))
        ),
        path,
    )


def _describe_changes(before: dict | None, experiment: Experiment) -> str:
    """The spec fields whose change alone changes the search-space fingerprint, each with its old and new value."""
    from kubetune.spec import parse_experiment

    try:
        fingerprint = parse_experiment(before).search_space_fingerprint()
    except UserError:  # not recorded, or refused by this version's stricter rules
        return "the spec it was last run with is not recorded or no longer valid, so the fields cannot be named"
    old, new = _leaves(before), _leaves(experiment.to_dict())
    changed: dict[tuple, str] = {}
    for path in sorted(
        p for p in old.keys() | new.keys() if p[0] == "spec" and old.get(p, _UNSET) != new.get(p, _UNSET)
    ):
        probe = {**old, path: new[path]} if path in new else {p: v for p, v in old.items() if p != path}
        try:
            alters = parse_experiment(_document(probe)).search_space_fingerprint() != fingerprint
        except UserError:
            alters = True  # not valid on its own: it changed together with another field
        if alters:
            named = _section(old, new, path)
            changed[named] = f"{'.'.join(map(str, named))} ({_shown(old, named)} -> {_shown(new, named)})"
    return (
        ", ".join(changed.values())
        or "a field of data, objective, parameters, architecture, trial.epochs or trial.batchSize"
    )


def name_metrics(study: optuna.Study, experiment: Experiment) -> None:
    """Give the study its objectives' metric names, which Optuna's plots and optuna-dashboard show."""
    names = [o.metric for o in experiment.spec.objectives]
    if study.metric_names != names:
        study.set_metric_names(names)  # experimental since Optuna 3.2 (its warning is filtered above), public


def ensure_study(experiment: Experiment, *, storage: RDBStorage | None = None) -> optuna.Study:
    """Create or load the study, record how to reproduce it, and fail trials whose heartbeat stopped.

    The search definition (see Experiment.search_space_fingerprint) is fixed once a trial has a result;
    until then a rerun may change it, so a first run that failed on bad data does not pin it.
    """
    storage = storage or open_storage(experiment)
    study = optuna.create_study(
        study_name=experiment.name,
        storage=storage,
        directions=experiment.spec.directions,
        sampler=make_sampler(experiment),
        pruner=make_pruner(experiment),
        load_if_exists=True,
    )
    recorded = study.user_attrs
    fingerprint = experiment.search_space_fingerprint()
    pinned = recorded.get("fingerprint")
    if pinned not in (None, fingerprint) and _has_results(study):
        raise StudyError(
            f"study {experiment.name!r} was created with a different data, objective or search space: "
            f"{_describe_changes(recorded.get('spec'), experiment)}; give the experiment a new metadata.name to "
            "start a new study, or restore the original spec to resume it"
        )
    if [d.name.lower() for d in study.directions] != experiment.spec.directions:
        raise StudyError(
            f"study {experiment.name!r} has directions {study.directions}; the spec asks for {experiment.spec.directions}"
        )
    if pinned != fingerprint:  # a new study, or one whose runs so far gave no result (bad data, say)
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("started_at", dt.datetime.now(dt.UTC).isoformat())
        study.set_user_attr("versions", _versions())
        study.set_user_attr("seed", experiment.spec.strategy.sampler.seed)
        study.set_user_attr("metrics", [o.metric for o in experiment.spec.objectives])
    name_metrics(study, experiment)
    study.set_user_attr("spec", experiment.to_dict())
    optuna.storages.fail_stale_trials(study)
    return study


@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    retried: int

    @property
    def consumed(self) -> int:
        """Trials that count against the budget: finished ones, less failures that were retried."""
        return self.complete + self.pruned + self.failed - self.retried


def count_trials(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    by_state = {state: sum(t.state == state for t in trials) for state in TrialState}
    # A retry lists every attempt before it (a retry of a retry names the same original "failed_trial").
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", ())}
    return Counts(
        complete=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL],
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
        retried=len(retried),
    )


def plan_slots(study: optuna.Study, experiment: Experiment) -> list[int]:
    """Slot indices for this segment: at most trialsPerSegment, never past the trial budget."""
    counts = count_trials(study)
    budget = experiment.spec.budget
    remaining = budget.max_trials - counts.consumed - counts.running
    return list(range(max(0, min(budget.trials_per_segment, remaining))))


@dataclass(frozen=True)
class Decision:
    go_on: bool
    reason: str


def _elapsed_seconds(study: optuna.Study) -> float:
    started = dt.datetime.fromisoformat(study.user_attrs["started_at"])
    return (dt.datetime.now(dt.UTC) - started).total_seconds()


def _improves(value: float, best: float | None, direction: str) -> bool:
    return best is None or (value > best if direction == "maximize" else value < best)


def _target_reached(best: FrozenTrial | None, target: float | None, direction: str) -> bool:
    if target is None or best is None:
        return False
    return best.values[0] >= target if direction == "maximize" else best.values[0] <= target


def _patience_exhausted(study: optuna.Study, patience: int, direction: str) -> bool:
    completed = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    completed.sort(key=lambda t: t.datetime_complete)
    best, since = None, 0
    for trial in completed:
        if _improves(trial.value, best, direction):
            best, since = trial.value, 0
        else:
            since += 1
    return since >= patience


FIRST_STOP_RULE = "stop_rule"  # study attribute: the stop rule a suggest step found holding first


def _grid_covered(study: optuna.Study, experiment: Experiment) -> bool:
    """Every configuration of a grid search has been tried: another trial could only repeat one."""
    if experiment.spec.strategy.sampler.name != "grid":
        return False
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return len({tuple(sorted(t.params.items())) for t in finished}) >= grid_points(experiment.spec)


def _stop_rules(study: optuna.Study, experiment: Experiment, *, segments_finished: int | None) -> list[tuple[str, str]]:
    """The stop rules that hold now, as (rule, reason) in the spec's order; maxSegments only between segments."""
    budget = experiment.spec.budget
    counts = count_trials(study)
    direction = experiment.spec.directions[0]
    rules = [
        (
            "maxTrials",
            counts.consumed >= budget.max_trials,
            f"maxTrials reached ({counts.consumed} of {budget.max_trials})",
        ),
        (
            "maxDuration",
            budget.max_duration_seconds is not None and _elapsed_seconds(study) >= budget.max_duration_seconds,
            f"maxDuration {budget.max_duration} reached",
        ),
        (
            "targetValue",
            _target_reached(best_trial(study, experiment), budget.target_value, direction),
            f"targetValue {budget.target_value} reached",
        ),
        (
            "patience",
            budget.patience is not None and _patience_exhausted(study, budget.patience, direction),
            f"patience: no improvement in the last {budget.patience} completed trials",
        ),
        ("grid", _grid_covered(study, experiment), "the grid is covered: every configuration was tried"),
        (
            "maxSegments",
            segments_finished is not None and segments_finished >= budget.max_segments,
            f"maxSegments reached ({budget.max_segments})",
        ),
    ]
    return [(rule, reason) for rule, holds, reason in rules if holds]


def _first_held(study: optuna.Study, held: list[tuple[str, str]]) -> tuple[str, str]:
    """The rule a suggest step recorded as holding first, if it still holds; else the first in the spec's order."""
    recorded = study.user_attrs.get(FIRST_STOP_RULE)
    return next((rule for rule in held if rule[0] == recorded), held[0])


def stop_before_trial(study: optuna.Study, experiment: Experiment) -> str | None:
    """Why no new trial may start (a stop rule holds), or None; the rule is recorded if it held first.

    Checked before every trial, so a reached targetValue or maxDuration ends the search within the
    segment instead of after it; trials already running finish.
    """
    held = _stop_rules(study, experiment, segments_finished=None)
    if not held:
        return None
    rule, reason = _first_held(study, held)
    if study.user_attrs.get(FIRST_STOP_RULE) != rule:
        study.set_user_attr(FIRST_STOP_RULE, rule)
    return reason


def decide(study: optuna.Study, experiment: Experiment, *, segments_finished: int) -> Decision:
    """Whether the experiment goes on after its ``segments_finished``-th segment, and why it stops if not.

    Segments count per experiment, over every spec's chain of runs, as ``maxSegments`` says. Of several
    rules that hold, the reason is the one that held first (see stop_before_trial).
    """
    held = _stop_rules(study, experiment, segments_finished=segments_finished)
    if held:
        return Decision(False, _first_held(study, held)[1])
    budget = experiment.spec.budget
    return Decision(True, f"{count_trials(study).consumed} of {budget.max_trials} trials done")


def best_trial(study: optuna.Study, experiment: Experiment) -> FrozenTrial | None:
    """The single best trial; with several objectives, the Pareto-optimal one best on the first."""
    front = study.best_trials if experiment.spec.is_multi_objective else None
    if front is not None:
        if not front:
            return None
        first = experiment.spec.directions[0]
        return (max if first == "maximize" else min)(front, key=lambda t: t.values[0])
    try:
        return study.best_trial
    except ValueError:
        return None


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return study._storage.get_trial(trial_id)


def live_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A Trial handle for reporting and pruning from another process than the one that asked."""
    return optuna.Trial(study, get_trial(study, number)._trial_id)


def tell_once(study: optuna.Study, number: int, *, state: TrialState, values: Sequence[float] | None = None) -> bool:
    """Tell the study once; a repeated or racing tell of the same trial is a no-op. True if this call told."""
    if get_trial(study, number).state.is_finished():
        return False
    try:
        # Not skip_if_finished: it returns quietly when a racing tell got there first, and this call
        # would then claim it told. The storage refuses the second write under a row lock instead.
        study.tell(number, values=values if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except ValueError:
        if get_trial(study, number).state.is_finished():  # "Cannot tell a COMPLETE trial.": a racer won
            return False
        raise
    except RuntimeError as error:
        # The grid sampler calls study.stop() once the grid is covered, which raises outside optimize();
        # Optuna has stored the trial's state by then (tell stores it in a `finally`).
        if "Study.stop" not in str(error):
            raise
    return True


def beat(study: optuna.Study, trial_id: int) -> bool:
    """Record one heartbeat; False if the database is away (a restart).

    Not retried, so a beat never blocks during an outage: the next beat tries again, and a trial that
    never beats goes stale from its start time.
    """
    try:
        study._storage.record_heartbeat(trial_id)
    except Exception:  # noqa: BLE001 - Optuna wraps SQLAlchemy errors in StorageInternalError
        return False
    return True


def heartbeat(study: optuna.Study, number: int, *, interval: float):
    """A context that records the trial's heartbeat every ``interval`` seconds while the body runs."""
    trial_id = get_trial(study, number)._trial_id
    return every(interval, lambda: beat(study, trial_id), name=f"heartbeat-{number}")


def seconds_until_stale(study: optuna.Study) -> float | None:
    """How long until every running trial has gone stale if none beats again; None when none runs."""
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache wrapper
    idle = storage.idle_seconds(study._study_id)
    return max(0.0, storage.grace_period - min(idle.values())) if idle else None


def lane_seed(segment: int, slot: int) -> int:
    """A distinct, reproducible sampler seed offset for each lane of each segment."""
    return int(hashlib.sha256(f"{segment}:{slot}".encode()).hexdigest()[:8], 16)
