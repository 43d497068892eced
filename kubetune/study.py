"""The study: the only state of an experiment, shared by every step through the database.

Steps pass trial *numbers*; each step reopens the study, so any step can be re-run or resumed.
Heartbeats are recorded by the trainer itself (Optuna's own heartbeat only runs inside optimize()),
and `ensure_study` fails the stale trials, which Optuna's retry callback re-enqueues.

Optuna's Study has no public way to reach a trial by number from another process, its storage, or
its id; the functions here that need them (``_storage``, ``_study_id``, ``_trial_id``) are the only
ones in kubetune that do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from kubetune import siblings
from kubetune.grpc_storage import ProxiedStorage
from kubetune.periodic import every
from kubetune.samplers import make_pruner, make_sampler
from kubetune.spec import Experiment
from kubetune.spec_changes import describe_changes
from kubetune.storage import ReconnectingStorage, Storage, StudyError, open_storage

__all__ = [
    "ask_tagged",
    "beat",
    "best_trial",
    "ensure_study",
    "get_trial",
    "heartbeat",
    "lane_seed",
    "live_trial",
    "load_study",
    "name_metrics",
    "once_per_study",
    "running_trial_tagged",
    "seconds_until_stale",
    "set_trial_attrs",
    "tag_trial",
    "tell_once",
]

TRACKED_PACKAGES = ("kubetune", "optuna", "torch", "mlflow", "kfp", "numpy", "scikit-learn")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load_study(experiment: Experiment, *, storage: BaseStorage | None = None, seed_offset: int = 0) -> optuna.Study:
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


def name_metrics(study: optuna.Study, experiment: Experiment) -> None:
    """Give the study its objectives' metric names, which Optuna's plots and optuna-dashboard show."""
    names = [o.metric for o in experiment.spec.objectives]
    if study.metric_names != names:
        study.set_metric_names(names)  # experimental since Optuna 3.2 (see kubetune.optuna_messages), public


def ensure_study(experiment: Experiment, *, storage: RDBStorage | ProxiedStorage | None = None) -> optuna.Study:
    """Create or load the study, record how to reproduce it, and fail trials whose heartbeat stopped.

    The search definition (see Experiment.search_space_fingerprint) is fixed once a trial has a result;
    until then a rerun may change it, so a first run that failed on bad data does not pin it.
    """
    storage = storage or open_storage(experiment)
    study = optuna.create_study(
        study_name=experiment.name,
        storage=storage,
        directions=[optuna.study.StudyDirection[d.upper()] for d in experiment.spec.directions],
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
            f"{describe_changes(recorded.get('spec'), experiment)}; give the experiment a new metadata.name to "
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
    if experiment.spec.strategy.seeds > 1 or experiment.spec.strategy.baseline != "none":
        study.set_user_attr("siblings", siblings.names(experiment))
    optuna.storages.fail_stale_trials(study)
    return study


def once_per_study(study: optuna.Study, attr: str, work: Callable[[], dict], *, what: str) -> tuple[dict, bool]:
    """The work a step does once per study before the lanes (the supernet, the warm start): ``work()``'s summary,
    recorded in the study attribute ``attr``, unless ``attr`` already records it; and whether it ran now."""
    done = study.user_attrs.get(attr)
    if done:
        print(f"kubetune: the {what} of this study is already done; nothing to do")
        return done, False
    summary = work()
    study.set_user_attr(attr, summary)
    return summary, True


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


def _trial_id(study: optuna.Study, number: int) -> int:
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def _reconnecting(study: optuna.Study) -> Storage:
    """The study's kubetune storage (under Optuna's cache wrapper when direct)."""
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, (ReconnectingStorage, ProxiedStorage)):
        raise TypeError(f"the study's storage is {type(storage).__name__}, not one from kubetune.storage.open_storage")
    return storage


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    return study._storage.get_trial(_trial_id(study, number))


def live_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A Trial handle for reporting and pruning from another process than the one that asked."""
    return optuna.Trial(study, _trial_id(study, number))


def set_trial_attrs(study: optuna.Study, number: int, attrs: Mapping[str, Any]) -> None:
    """Store user attributes on trial ``number`` (a finished trial's attributes are frozen: set them first)."""
    trial_id = _trial_id(study, number)
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial_id, key, value)


def tag_trial(study: optuna.Study, number: int, key: str, value: str) -> None:
    """Mark trial ``number`` with a system attribute (kubetune's bookkeeping, not shown as a user attribute)."""
    study._storage.set_trial_system_attr(_trial_id(study, number), key, value)


def ask_tagged(study: optuna.Study, tags: Mapping[str, str]) -> optuna.Trial:
    """``study.ask()``, the trial carrying the system attributes ``tags`` before it runs.

    Tagging after the ask leaves a window: a process killed between the two writes leaves a running
    trial that no retry can find, holding a budget slot until it goes stale. The tags go first on the
    trial the ask will pop instead: the first waiting trial, or a new waiting one. A killed ask leaves
    at worst a tagged waiting trial, which the retry (or any next ask) pops. The caller must not ask the
    study concurrently (the suggest service asks one request at a time per study).
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        for key, value in tags.items():
            tag_trial(study, waiting[0].number, key, value)
    else:
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=dict(tags)))
    return study.ask()


def running_trial_tagged(study: optuna.Study, key: str, value: str) -> optuna.Trial | None:
    """The running trial that :func:`tag_trial` marked ``key=value``, as a live handle; None if there is none."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    found = next((t for t in running if t.system_attrs.get(key) == value), None)
    return None if found is None else optuna.Trial(study, found._trial_id)


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


def _beat(study: optuna.Study, trial_id: int) -> bool:
    try:
        _reconnecting(study).record_heartbeat(trial_id)
    except Exception:  # noqa: BLE001 - Optuna wraps SQLAlchemy errors in StorageInternalError
        return False
    return True


def beat(study: optuna.Study, number: int) -> bool:
    """Record one heartbeat of trial ``number`` (asked in this process); False if the database is away.

    Not retried, so a beat never blocks during an outage: the next beat tries again, and a trial that
    never beats goes stale from its start time.
    """
    return _beat(study, _trial_id(study, number))


def heartbeat(study: optuna.Study, number: int, *, interval: float) -> AbstractContextManager[None]:
    """A context that records the trial's heartbeat every ``interval`` seconds while the body runs."""
    trial_id = _trial_id(study, number)

    def beat_once() -> None:
        _beat(study, trial_id)  # a missed beat is retried at the next interval

    return every(interval, beat_once, name=f"heartbeat-{number}")


def seconds_until_stale(study: optuna.Study) -> float | None:
    """How long until every running trial has gone stale if none beats again; None when none runs."""
    storage = _reconnecting(study)
    idle = storage.idle_seconds(study._study_id)
    return max(0.0, (storage.grace_period or 0) - min(idle.values())) if idle else None


def lane_seed(segment: int, slot: int) -> int:
    """A distinct, reproducible sampler seed offset for each lane of each segment."""
    return int(hashlib.sha256(f"{segment}:{slot}".encode()).hexdigest()[:8], 16)
