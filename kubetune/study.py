"""The study: the only state of an experiment, shared by every step through the database.

Steps pass trial *numbers*; each step reopens the study, so any step can be re-run or resumed.
Heartbeats are recorded by the trainer itself (Optuna's own heartbeat only runs inside optimize()),
and `ensure_study` fails the stale trials, which Optuna's retry callback re-enqueues.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
import warnings
from dataclasses import dataclass
from typing import Sequence

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from kubetune import settings
from kubetune.errors import UserError
from kubetune.periodic import every
from kubetune.space import grid_space
from kubetune.spec import Experiment

__all__ = [
    "StudyError",
    "Counts",
    "Decision",
    "open_storage",
    "ensure_study",
    "load_study",
    "count_trials",
    "plan_slots",
    "decide",
    "get_trial",
    "tell_once",
    "heartbeat",
    "best_trial",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# kubetune records heartbeats itself for ask/tell trials (see `heartbeat`), so Optuna's hint does not apply.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

TRACKED_PACKAGES = ("kubetune", "optuna", "torch", "mlflow", "kfp", "numpy", "scikit-learn")


class StudyError(UserError, RuntimeError):
    """A study that cannot be used as asked (unreachable database, changed search space)."""


def open_storage(experiment: Experiment, url: str | None = None) -> RDBStorage:
    """The RDB storage with heartbeats, stale-trial retries and connections that survive a DB restart."""
    url = url or settings.storage_url()
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs.update(pool_size=2, max_overflow=2, pool_recycle=300)
    heartbeat_seconds = experiment.spec.trial.heartbeat_seconds
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=3 * heartbeat_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=experiment.spec.trial.retries),
        )
    except (SQLAlchemyError, OSError, ImportError, ValueError) as error:
        raise StudyError(
            f"cannot open the study database {settings.redact(url)}: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}. Check KUBETUNE_STORAGE and that the database is up."
        ) from None


def make_sampler(experiment: Experiment, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in the spec; ``seed_offset`` keeps parallel lanes from drawing the same points."""
    spec = experiment.spec
    base = spec.strategy.sampler.seed
    seed = None if base is None else (base + seed_offset) % 2**32  # numpy takes seeds below 2**32
    name = spec.strategy.sampler.name
    startup = max(3, min(10, spec.budget.max_trials // 4))
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=seed)
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


def ensure_study(experiment: Experiment, *, storage: RDBStorage | None = None) -> optuna.Study:
    """Create or load the study, record how to reproduce it, and fail trials whose heartbeat stopped."""
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
    if "fingerprint" in recorded and recorded["fingerprint"] != fingerprint:
        raise StudyError(
            f"study {experiment.name!r} was created with a different data, objective or search space "
            f"(fingerprint {recorded['fingerprint']} vs {fingerprint} now); give the experiment a new "
            "metadata.name to start a new study, or restore the original spec to resume it"
        )
    if [d.name.lower() for d in study.directions] != experiment.spec.directions:
        raise StudyError(f"study {experiment.name!r} has directions {study.directions}; the spec asks for {experiment.spec.directions}")
    if "fingerprint" not in recorded:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("started_at", dt.datetime.now(dt.timezone.utc).isoformat())
        study.set_user_attr("versions", _versions())
        study.set_user_attr("seed", experiment.spec.strategy.sampler.seed)
        study.set_user_attr("metrics", [o.metric for o in experiment.spec.objectives])
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
    return (dt.datetime.now(dt.timezone.utc) - started).total_seconds()


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


def decide(study: optuna.Study, experiment: Experiment, *, segment: int) -> Decision:
    """Whether the experiment goes on after ``segment``, and why it stops if it does not."""
    budget = experiment.spec.budget
    counts = count_trials(study)
    direction = experiment.spec.directions[0]
    best = best_trial(study, experiment)
    reasons = [
        (counts.consumed >= budget.max_trials, f"maxTrials reached ({counts.consumed} of {budget.max_trials})"),
        (
            budget.max_duration_seconds is not None and _elapsed_seconds(study) >= budget.max_duration_seconds,
            f"maxDuration {budget.max_duration} reached",
        ),
        (_target_reached(best, budget.target_value, direction),
            f"targetValue {budget.target_value} reached",
        ),
        (
            budget.patience is not None and _patience_exhausted(study, budget.patience, direction),
            f"patience: no improvement in the last {budget.patience} completed trials",
        ),
        (segment + 1 >= budget.max_segments, f"maxSegments reached ({budget.max_segments})"),
    ]
    for hit, reason in reasons:
        if hit:
            return Decision(False, reason)
    return Decision(True, f"{counts.consumed} of {budget.max_trials} trials done")


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
        study.tell(number, values=values if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except RuntimeError as error:
        # GridSampler calls study.stop() once the grid is covered, which raises outside optimize();
        # Optuna has stored the trial's state by then (tell stores it in a `finally`).
        if "Study.stop" not in str(error):
            raise
    return True


def heartbeat(study: optuna.Study, number: int, *, interval: float):
    """A context that records the trial's heartbeat every ``interval`` seconds while the body runs."""
    storage = study._storage
    trial_id = get_trial(study, number)._trial_id

    def beat() -> None:
        try:
            storage.record_heartbeat(trial_id)
        except SQLAlchemyError:
            pass  # the database is briefly away (a restart); the next beat retries

    return every(interval, beat, name=f"heartbeat-{number}")


def lane_seed(segment: int, slot: int) -> int:
    """A distinct, reproducible sampler seed offset for each lane of each segment."""
    return int(hashlib.sha256(f"{segment}:{slot}".encode()).hexdigest()[:8], 16)
