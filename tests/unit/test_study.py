"""The study and its parts: creation, budget accounting, stop rules, idempotent tells, samplers, heartbeats, storage errors."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState, create_trial

from kubetune.errors import UserError
from kubetune.samplers import make_pruner, make_sampler
from kubetune.spec import parse_experiment
from kubetune.stop_rules import Counts, count_trials, decide, plan_slots
from kubetune.storage import StudyError, open_storage
from kubetune.study import best_trial, ensure_study, get_trial, heartbeat, lane_seed, load_study, tell_once

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]
PASSWORD = "Zx9-unlikely-Pw"
MULTI = [{"metric": "val_accuracy"}, {"metric": "params"}]


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, request):
    """An empty Optuna schema, created once: copying it is ten times faster than creating it per test."""
    path = tmp_path_factory.mktemp("template") / "optuna.db"
    experiment = parse_experiment(request.getfixturevalue("module_spec"))
    open_storage(experiment, f"sqlite:///{path}").engine.dispose()
    return path


@pytest.fixture(scope="module")
def module_spec():
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "template"},
        "spec": {"data": {"source": "builtin:digits"}, "objective": {"metric": "val_accuracy"}},
    }


@pytest.fixture
def new_url(tmp_path, template_db):
    """A fresh SQLite study database file (a copy of the empty template) as a URL."""
    count = iter(range(1000))

    def make_url() -> str:
        path = tmp_path / f"optuna-{next(count)}.db"
        shutil.copyfile(template_db, path)
        return f"sqlite:///{path}"

    return make_url


@pytest.fixture
def url(new_url) -> str:
    return new_url()


@pytest.fixture
def make(minimal_spec):
    """An Experiment from the minimal spec with ``spec`` sections replaced (shallow per section)."""

    def build(name: str = "unit-test", **sections) -> object:
        document = copy.deepcopy(minimal_spec)
        document["metadata"]["name"] = name
        document["spec"].update(copy.deepcopy(sections))
        return parse_experiment(document)

    return build


def _add(study: optuna.Study, state: TrialState, value=None, **system_attrs) -> None:
    values = None if value is None else (value if isinstance(value, list) else [value])
    study.add_trial(create_trial(state=state, values=values, system_attrs=system_attrs or None))


# creation and loading


def test_ensure_study_records_how_to_reproduce(make, url):
    experiment = make(strategy={"sampler": {"name": "random", "seed": 7}})
    before = dt.datetime.now(dt.UTC)
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    attrs = study.user_attrs
    assert study.study_name == "unit-test"
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert attrs["fingerprint"] == experiment.search_space_fingerprint()
    assert attrs["seed"] == 7 and attrs["metrics"] == ["val_accuracy"]
    assert {"python", "optuna", "kubetune"} <= set(attrs["versions"])
    assert attrs["versions"]["optuna"] == optuna.__version__
    started = dt.datetime.fromisoformat(attrs["started_at"])
    assert before - dt.timedelta(seconds=1) <= started <= dt.datetime.now(dt.UTC)
    assert attrs["spec"] == experiment.to_dict()


def test_ensure_study_multi_objective_directions(make, url):
    experiment = make(objective=MULTI)
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["metrics"] == ["val_accuracy", "params"]


def test_ensure_study_minimize(make, url):
    experiment = make(objective={"metric": "val_loss"})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE]


def test_ensure_study_via_environment(make, url, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STORAGE", url)
    experiment = make()
    ensure_study(experiment)
    assert optuna.study.get_all_study_names(storage=url) == ["unit-test"]
    assert load_study(experiment).study_name == "unit-test"


def test_re_ensure_is_idempotent_and_keeps_started_at(make, url):
    experiment = make()
    first = ensure_study(experiment, storage=open_storage(experiment, url)).user_attrs
    time.sleep(0.01)
    # a changed budget keeps the study; the recorded spec follows the latest one
    bigger = make(budget={"maxTrials": 99})
    again = ensure_study(bigger, storage=open_storage(bigger, url)).user_attrs
    assert again["started_at"] == first["started_at"] and again["fingerprint"] == first["fingerprint"]
    assert again["spec"]["spec"]["budget"]["maxTrials"] == 99
    assert len(optuna.study.get_all_study_names(storage=url)) == 1


def test_re_ensure_with_changed_space_is_refused(make, url):
    experiment = make(parameters={"lr": {"type": "float", "low": 0.001, "high": 0.1}})
    _add(ensure_study(experiment, storage=open_storage(experiment, url)), TrialState.COMPLETE, 0.5)
    changed = make(parameters={"lr": {"type": "float", "low": 0.001, "high": 0.5}})
    with pytest.raises(StudyError) as caught:
        ensure_study(changed, storage=open_storage(changed, url))
    message = str(caught.value)
    assert "'unit-test'" in message and "different data, objective or search space" in message
    assert "spec.parameters.lr.high (0.1 -> 0.5)" in message
    assert "metadata.name" in message
    assert isinstance(caught.value, UserError)


def test_re_ensure_with_changed_objective_is_refused(make, url):
    experiment = make()
    _add(ensure_study(experiment, storage=open_storage(experiment, url)), TrialState.PRUNED)
    changed = make(objective={"metric": "val_loss"})
    with pytest.raises(StudyError, match="different data, objective or search space"):
        ensure_study(changed, storage=open_storage(changed, url))


def test_load_study_before_ensure(make, url):
    experiment = make()
    with pytest.raises(StudyError, match="does not exist yet"):
        load_study(experiment, storage=open_storage(experiment, url))


def test_load_study_uses_the_spec_sampler_and_pruner(make, url):
    experiment = make(strategy={"sampler": {"name": "random"}, "pruner": {"name": "median"}})
    storage = open_storage(experiment, url)
    ensure_study(experiment, storage=storage)
    study = load_study(experiment, storage=storage, seed_offset=3)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)


# budget accounting


@pytest.fixture
def budget_study(make, url):
    experiment = make(budget={"maxTrials": 10, "trialsPerSegment": 4})
    return experiment, ensure_study(experiment, storage=open_storage(experiment, url))


def test_plan_slots_fresh_study(budget_study):
    experiment, study = budget_study
    assert count_trials(study) == Counts(0, 0, 0, 0, 0, 0)
    assert plan_slots(study, experiment) == [0, 1, 2, 3]


def test_plan_slots_counts_every_state(budget_study):
    experiment, study = budget_study
    for value in (0.1, 0.2, 0.3):
        _add(study, TrialState.COMPLETE, value)
    _add(study, TrialState.PRUNED, 0.1)
    _add(study, TrialState.FAIL)
    study.ask()  # running
    counts = count_trials(study)
    assert counts == Counts(complete=3, pruned=1, failed=1, running=1, waiting=0, retried=0)
    assert counts.consumed == 5
    assert plan_slots(study, experiment) == [0, 1, 2, 3]  # 10 - 5 - 1 = 4 left, capped at 4 anyway
    _add(study, TrialState.COMPLETE, 0.4)
    _add(study, TrialState.PRUNED, 0.4)
    assert plan_slots(study, experiment) == [0, 1]  # 10 - 7 - 1
    study.ask()
    _add(study, TrialState.FAIL)
    assert plan_slots(study, experiment) == []  # 10 - 8 - 2
    _add(study, TrialState.COMPLETE, 0.5)
    assert plan_slots(study, experiment) == []  # never negative


def test_retried_failures_do_not_consume_budget(budget_study):
    experiment, study = budget_study
    _add(study, TrialState.FAIL)  # trial 0 went stale ...
    _add(study, TrialState.WAITING, failed_trial=0, retry_history=[0])  # ... and was re-enqueued
    counts = count_trials(study)
    assert (counts.failed, counts.waiting, counts.retried, counts.consumed) == (1, 1, 1, 0)
    assert plan_slots(study, experiment) == [0, 1, 2, 3]


def test_a_retry_of_a_retry_does_not_consume_budget(make, url):
    experiment = make(budget={"maxTrials": 3, "trialsPerSegment": 5})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    _add(study, TrialState.FAIL)  # 0
    _add(study, TrialState.FAIL, failed_trial=0, retry_history=[0])  # 1: retry of 0, failed again
    _add(study, TrialState.WAITING, failed_trial=0, retry_history=[0, 1])  # 2: retry of 1
    counts = count_trials(study)
    assert (counts.failed, counts.retried, counts.consumed) == (2, 2, 0)
    assert plan_slots(study, experiment) == [0, 1, 2]


def test_plan_slots_capped_by_trials_per_segment(make, url):
    experiment = make(budget={"maxTrials": 100, "trialsPerSegment": 3})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert plan_slots(study, experiment) == [0, 1, 2]


# stop rules


def _decide_after(make, url, values, *, objective=None, segments_finished=1, **budget):
    experiment = make(objective=objective or {"metric": "val_accuracy"}, budget={"maxTrials": 50, **budget})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    for value in values:
        _add(study, TrialState.COMPLETE, value)
    return decide(study, experiment, segments_finished=segments_finished)


def test_decide_goes_on(make, url):
    decision = _decide_after(make, url, [0.5, 0.6])
    assert decision.go_on and decision.reason == "2 of 50 trials done"


def test_decide_max_trials(make, url, new_url):
    decision = _decide_after(make, url, [0.5, 0.6, 0.7], maxTrials=3)
    assert not decision.go_on and decision.reason == "maxTrials reached (3 of 3)"
    assert _decide_after(make, new_url(), [0.5, 0.6], maxTrials=3).go_on


def test_decide_max_trials_counts_pruned_and_failed(make, url):
    experiment = make(budget={"maxTrials": 3})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    _add(study, TrialState.COMPLETE, 0.5)
    _add(study, TrialState.PRUNED, 0.1)
    assert decide(study, experiment, segments_finished=1).go_on
    _add(study, TrialState.FAIL)
    assert not decide(study, experiment, segments_finished=1).go_on


@pytest.mark.parametrize(
    "metric, target, values, stops",
    [
        ("val_accuracy", 0.9, [0.5, 0.95, 0.7], True),
        ("val_accuracy", 0.9, [0.5, 0.9], True),
        ("val_accuracy", 0.9, [0.5, 0.89], False),
        ("val_loss", 0.1, [0.5, 0.05], True),
        ("val_loss", 0.1, [0.5, 0.1], True),
        ("val_loss", 0.1, [0.5, 0.2], False),
        ("val_accuracy", 0.9, [], False),
    ],
)
def test_decide_target_value(make, url, metric, target, values, stops):
    decision = _decide_after(make, url, values, objective={"metric": metric}, targetValue=target)
    assert decision.go_on is not stops
    if stops:
        assert decision.reason == f"targetValue {target} reached"


@pytest.mark.parametrize(
    "metric, values, stops",
    [
        ("val_accuracy", [0.5, 0.6, 0.55, 0.58], True),
        ("val_accuracy", [0.5, 0.6, 0.6, 0.6], True),  # a tie is no improvement
        ("val_accuracy", [0.5, 0.6, 0.55], False),
        ("val_accuracy", [0.5, 0.6, 0.55, 0.7], False),
        ("val_loss", [0.5, 0.3, 0.4, 0.35], True),
        ("val_loss", [0.5, 0.3, 0.4, 0.2], False),
        ("val_accuracy", [], False),
    ],
)
def test_decide_patience(make, url, metric, values, stops):
    decision = _decide_after(make, url, values, objective={"metric": metric}, patience=2)
    assert decision.go_on is not stops
    if stops:
        assert decision.reason == "patience: no improvement in the last 2 completed trials"


def test_decide_patience_ignores_pruned_trials(make, url):
    experiment = make(budget={"maxTrials": 50, "patience": 2})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    _add(study, TrialState.COMPLETE, 0.6)
    for _ in range(3):
        _add(study, TrialState.PRUNED, 0.1)
    _add(study, TrialState.COMPLETE, 0.5)
    assert decide(study, experiment, segments_finished=1).go_on


def test_decide_max_segments(make, url, new_url):
    assert _decide_after(make, url, [0.5], maxSegments=2, segments_finished=1).go_on
    decision = _decide_after(make, new_url(), [0.5], maxSegments=2, segments_finished=2)
    assert not decision.go_on and decision.reason == "maxSegments reached (2)"


def test_decide_max_duration(make, url):
    experiment = make(budget={"maxTrials": 50, "maxDuration": "1m"})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert decide(study, experiment, segments_finished=1).go_on
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61)
    study.set_user_attr("started_at", started.isoformat())
    decision = decide(study, experiment, segments_finished=1)
    assert not decision.go_on and decision.reason == "maxDuration 1m reached"
    # the start time survives a re-ensure, so the clock is not reset by a new segment
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert not decide(study, experiment, segments_finished=1).go_on


def test_decide_multi_objective(make, url):
    experiment = make(objective=MULTI, budget={"maxTrials": 3})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    _add(study, TrialState.COMPLETE, [0.9, 100.0])
    _add(study, TrialState.COMPLETE, [0.8, 10.0])
    assert decide(study, experiment, segments_finished=1).go_on
    _add(study, TrialState.COMPLETE, [0.7, 200.0])
    assert decide(study, experiment, segments_finished=1).reason == "maxTrials reached (3 of 3)"


# tell_once


def test_tell_once_is_idempotent(make, url):
    experiment = make()
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    number = study.ask().number
    assert tell_once(study, number, state=TrialState.COMPLETE, values=[0.7]) is True
    assert tell_once(study, number, state=TrialState.COMPLETE, values=[0.1]) is False
    assert tell_once(study, number, state=TrialState.FAIL) is False
    trial = get_trial(study, number)
    assert trial.state == TrialState.COMPLETE and trial.values == [0.7]


def test_tell_once_pruned_then_complete(make, url):
    experiment = make()
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    trial = study.ask()
    trial.report(0.3, step=1)
    assert tell_once(study, trial.number, state=TrialState.PRUNED) is True
    assert tell_once(study, trial.number, state=TrialState.COMPLETE, values=[0.9]) is False
    frozen = get_trial(study, trial.number)
    assert frozen.state == TrialState.PRUNED and frozen.values == [0.3]


def test_tell_once_fail_ignores_values(make, url):
    experiment = make()
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    number = study.ask().number
    assert tell_once(study, number, state=TrialState.FAIL, values=[0.5]) is True
    frozen = get_trial(study, number)
    assert frozen.state == TrialState.FAIL and frozen.values is None


def test_tell_once_from_another_handle(make, url):
    """Steps reopen the study: a tell through a second load sees the first one."""
    experiment = make()
    storage = open_storage(experiment, url)
    study = ensure_study(experiment, storage=storage)
    number = study.ask().number
    assert tell_once(
        load_study(experiment, storage=open_storage(experiment, url)), number, state=TrialState.COMPLETE, values=[0.4]
    )
    assert not tell_once(study, number, state=TrialState.COMPLETE, values=[0.4])


# samplers and pruners


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.BruteForceSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "qmc": optuna.samplers.QMCSampler,
}
FINITE = {
    "lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
}


@pytest.mark.parametrize("name, cls", SAMPLERS.items(), ids=SAMPLERS.keys())
def test_make_sampler(make, name, cls):
    experiment = make(parameters=FINITE, strategy={"sampler": {"name": name, "seed": 3}})
    sampler = make_sampler(experiment)
    assert isinstance(sampler, cls)  # tpe: a TPESampler subclass that shares work between parameter groups
    study = optuna.create_study(sampler=sampler, direction="maximize")
    trial = study.ask()
    value = trial.suggest_float("lr", 0.01, 0.03, step=0.01)
    assert min(abs(value - v) for v in (0.01, 0.02, 0.03)) < 1e-9


def test_make_sampler_seeds(make):
    experiment = make(strategy={"sampler": {"name": "random", "seed": 5}})

    def draws(sampler):
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert draws(make_sampler(experiment)) == draws(make_sampler(experiment))
    assert draws(make_sampler(experiment, seed_offset=1)) != draws(make_sampler(experiment))


def test_make_sampler_seed_offset_stays_in_numpy_range(make):
    """A lane offset is up to 2**32 - 1; added to the user's seed it must still seed numpy."""
    experiment = make(strategy={"sampler": {"name": "tpe", "seed": 2**32 - 1}})
    offset = max(lane_seed(segment, slot) for segment in range(4) for slot in range(8))
    study = optuna.create_study(sampler=make_sampler(experiment, seed_offset=offset))
    assert 0 <= study.ask().suggest_float("x", 0, 1) <= 1


def test_make_sampler_without_seed(make):
    experiment = make(strategy={"sampler": {"name": "random", "seed": None}})
    study = optuna.create_study(sampler=make_sampler(experiment, seed_offset=12))
    assert 0 <= study.ask().suggest_float("x", 0, 1) <= 1


def test_lane_seed_is_reproducible_and_distinct():
    seeds = {lane_seed(segment, slot) for segment in range(10) for slot in range(10)}
    assert len(seeds) == 100
    assert lane_seed(3, 4) == lane_seed(3, 4)
    assert all(0 <= seed < 2**32 for seed in seeds)


def test_make_pruner(make):
    assert isinstance(make_pruner(make()), optuna.pruners.NopPruner)
    median = make_pruner(make(strategy={"pruner": {"name": "median", "startupTrials": 4, "warmupSteps": 2}}))
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (4, 2)
    asha = make_pruner(make(strategy={"pruner": {"name": "asha", "minResource": 2, "reductionFactor": 4}}))
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    assert (asha._min_resource, asha._reduction_factor) == (2, 4)
    hyperband = make_pruner(
        make(strategy={"pruner": {"name": "hyperband", "minResource": 1, "reductionFactor": 3}}, trial={"epochs": 9})
    )
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 9, 3)


# best trial


def test_best_trial_single_objective(make, url):
    experiment = make(objective={"metric": "val_loss"})
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert best_trial(study, experiment) is None
    for value in (0.5, 0.2, 0.3):
        _add(study, TrialState.COMPLETE, value)
    _add(study, TrialState.PRUNED, 0.01)
    best = best_trial(study, experiment)
    assert best.number == 1 and best.value == 0.2


def test_best_trial_multi_objective(make, url):
    experiment = make(objective=MULTI)
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    assert best_trial(study, experiment) is None
    _add(study, TrialState.COMPLETE, [0.8, 10.0])
    _add(study, TrialState.COMPLETE, [0.9, 100.0])
    _add(study, TrialState.COMPLETE, [0.95, 50.0])  # dominates trial 1
    _add(study, TrialState.COMPLETE, [0.7, 200.0])  # dominated
    best = best_trial(study, experiment)
    assert best.number == 2 and best.values == [0.95, 50.0]
    assert {t.number for t in study.best_trials} == {0, 2}


def test_best_trial_multi_objective_minimize_first(make, url):
    experiment = make(objective=[{"metric": "params"}, {"metric": "val_accuracy"}])
    study = ensure_study(experiment, storage=open_storage(experiment, url))
    _add(study, TrialState.COMPLETE, [10.0, 0.8])
    _add(study, TrialState.COMPLETE, [100.0, 0.9])
    assert best_trial(study, experiment).number == 0


# heartbeats and stale trials


def _heartbeat_at(storage, trial_id: int):
    with sqlalchemy.orm.Session(storage.engine) as session:
        row = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).one_or_none()
        return None if row is None else row.heartbeat


def _backdate(storage, trial_id: int, hours: float = 1) -> None:
    with sqlalchemy.orm.Session(storage.engine) as session:
        row = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).one()
        row.heartbeat = row.heartbeat - dt.timedelta(hours=hours)
        session.commit()


@pytest.fixture
def heartbeat_study(make, url):
    experiment = make(trial={"heartbeatSeconds": 5, "retries": 1})
    storage = open_storage(experiment, url)
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 15)
    return experiment, storage, ensure_study(experiment, storage=storage)


def test_heartbeat_records_and_stops(heartbeat_study):
    experiment, storage, study = heartbeat_study
    trial = study.ask()
    assert _heartbeat_at(storage, trial._trial_id) is None
    with heartbeat(study, trial.number, interval=0.02):
        deadline = time.monotonic() + 5
        while _heartbeat_at(storage, trial._trial_id) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _heartbeat_at(storage, trial._trial_id) is not None
        _backdate(storage, trial._trial_id)
        old = _heartbeat_at(storage, trial._trial_id)
        while _heartbeat_at(storage, trial._trial_id) == old and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _heartbeat_at(storage, trial._trial_id) > old  # beats keep coming
    assert not [t for t in threading.enumerate() if t.name == f"heartbeat-{trial.number}"]
    # a trial with a live heartbeat is not failed by ensure_study
    ensure_study(experiment, storage=storage)
    assert get_trial(study, trial.number).state == TrialState.RUNNING


def test_heartbeat_thread_stops_when_the_body_raises(heartbeat_study):
    _, _, study = heartbeat_study
    trial = study.ask()
    with pytest.raises(KeyError):
        with heartbeat(study, trial.number, interval=0.02):
            raise KeyError("boom")
    assert not [t for t in threading.enumerate() if t.name == f"heartbeat-{trial.number}"]


def test_stale_trial_is_failed_and_retried(heartbeat_study):
    experiment, storage, study = heartbeat_study
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(trial._trial_id)
    _backdate(storage, trial._trial_id)

    study = ensure_study(experiment, storage=storage)

    assert get_trial(study, trial.number).state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["failed_trial"] == trial.number
    assert waiting[0].params == trial.params  # the retry re-runs the same point
    counts = count_trials(study)
    assert (counts.failed, counts.waiting, counts.retried, counts.consumed) == (1, 1, 1, 0)
    assert decide(study, experiment, segments_finished=1).go_on

    # the retry goes stale too: retries=1 allows no second retry, so one trial's worth is consumed
    retry = study.ask()
    assert retry.number == waiting[0].number
    storage.record_heartbeat(retry._trial_id)
    _backdate(storage, retry._trial_id)
    study = ensure_study(experiment, storage=storage)
    assert get_trial(study, retry.number).state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING,))
    counts = count_trials(study)
    assert (counts.failed, counts.retried, counts.consumed) == (2, 1, 1)


def test_chain_of_stale_retries(make, url):
    experiment = make(trial={"heartbeatSeconds": 5, "retries": 2}, budget={"maxTrials": 2, "trialsPerSegment": 5})
    storage = open_storage(experiment, url)
    study = ensure_study(experiment, storage=storage)
    for _ in range(2):
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        _backdate(storage, trial._trial_id)
        study = ensure_study(experiment, storage=storage)
    counts = count_trials(study)
    assert (counts.failed, counts.waiting, counts.retried, counts.consumed) == (2, 1, 2, 0)
    assert plan_slots(study, experiment) == [0, 1]


# storage errors


def test_unreachable_postgres_hides_the_password(make):
    experiment = make()
    with pytest.raises(StudyError) as caught:
        open_storage(experiment, f"postgresql+psycopg://kt:{PASSWORD}@127.0.0.1:1/optuna")
    message = str(caught.value)
    assert PASSWORD not in message
    assert "postgresql+psycopg://kt:***@127.0.0.1:1/optuna" in message
    assert "KUBETUNE_STORAGE" in message
    assert isinstance(caught.value, UserError)


def test_unreachable_postgres_from_environment(make, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STORAGE", f"postgresql+psycopg://kt:{PASSWORD}@127.0.0.1:1/optuna")
    with pytest.raises(StudyError) as caught:
        ensure_study(make())
    assert PASSWORD not in str(caught.value) and "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    [
        f"postgresql+psycopg://kt:{PASSWORD}@127.0.0.1:notaport/optuna",
        f"nosuchdialect://kt:{PASSWORD}@127.0.0.1/optuna",
        f"postgresql+psycopg://127.0.0.1:1/optuna?password={PASSWORD}",
    ],
)
def test_bad_storage_url_is_a_study_error_without_the_password(make, bad):
    with pytest.raises(StudyError) as caught:
        open_storage(make(), bad)
    assert PASSWORD not in str(caught.value)


def test_sqlite_in_an_unwritable_place(make, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StudyError, match="cannot open the study database"):
        open_storage(make(), f"sqlite:///{blocker}/sub/optuna.db")
