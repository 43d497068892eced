"""Regressions (issue 9): memory kept by study reads, trials that never beat, the runner's stale wait."""

from __future__ import annotations

import datetime as dt
import gc
import tracemalloc

import optuna
import pytest
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

from kubetune import local
from kubetune.spec import parse_experiment
from kubetune.stop_rules import count_trials, plan_slots
from kubetune.storage import open_storage
from kubetune.study import ensure_study, get_trial, seconds_until_stale

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")]


@pytest.fixture
def experiment(minimal_spec):
    minimal_spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1}}
    minimal_spec["spec"]["trial"] = {"heartbeatSeconds": 5, "retries": 1}
    minimal_spec["spec"]["budget"] = {"maxTrials": 2, "trialsPerSegment": 2}
    return parse_experiment(minimal_spec)


@pytest.fixture
def study(experiment, tmp_path):
    return ensure_study(experiment, storage=open_storage(experiment, f"sqlite:///{tmp_path}/optuna.db"))


def _backdate_start(study: optuna.Study, trial_id: int, seconds: float) -> None:
    with sqlalchemy.orm.Session(study._storage._backend.engine) as session:
        row = session.get(models.TrialModel, trial_id)
        row.datetime_start -= dt.timedelta(seconds=seconds)
        session.commit()


def test_polling_the_study_keeps_no_memory(study):
    """The runner polls every second; what a poll allocates must be freed, not kept for the process's life."""
    for _ in range(4):
        study.ask().suggest_float("lr", 1e-3, 1e-1)
    for _ in range(20):  # warm caches (SQLAlchemy's compiled statements)
        count_trials(study)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            count_trials(study)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 300 * 1024  # each poll kept about 14 KB when its garbage was frozen


def test_a_trial_that_never_beat_goes_stale_from_its_start_and_is_retried(experiment, study):
    trial = study.ask()  # its step died before the first heartbeat (or a retried create made it twice)
    trial.suggest_float("lr", 1e-3, 1e-1)
    assert plan_slots(study, experiment) == [0]
    ensure_study(experiment, storage=study._storage)
    assert get_trial(study, trial.number).state == TrialState.RUNNING  # still within the grace period

    _backdate_start(study, trial._trial_id, seconds=16)  # grace is 3 x 5 s
    study = ensure_study(experiment, storage=study._storage)

    assert get_trial(study, trial.number).state == TrialState.FAIL
    [retry] = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["failed_trial"] == trial.number and retry.params == trial.params
    assert plan_slots(study, experiment) == [0, 1]


def test_seconds_until_stale_counts_from_the_start_or_the_last_beat(study):
    assert seconds_until_stale(study) is None
    silent, beating = study.ask(), study.ask()
    _backdate_start(study, silent._trial_id, seconds=10)
    _backdate_start(study, beating._trial_id, seconds=100)
    study._storage.record_heartbeat(beating._trial_id)  # beat just now: 15 s left for it
    assert 14 <= seconds_until_stale(study) <= 15
    study.tell(beating, state=TrialState.FAIL)
    assert 4 <= seconds_until_stale(study) <= 5  # the silent one started 10 s ago


def test_the_runner_says_it_waits_for_stale_trials_and_never_waits_for_ever(experiment, study, monkeypatch, capsys):
    """A killed run left two trials that never beat and hold the whole budget: the rerun says so, then goes on."""
    for _ in range(2):
        study.ask().suggest_float("lr", 1e-3, 1e-1)
    storage = study._storage
    sleeps = []

    def sleep(seconds: float) -> None:  # time passes for the trials while the runner sleeps
        sleeps.append(seconds)
        assert len(sleeps) < 10, "the runner still waits after 50 s of a 15 s grace period"
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            _backdate_start(study, trial._trial_id, seconds)

    monkeypatch.setattr(local.time, "sleep", sleep)
    monkeypatch.setattr(local, "start_segment", lambda experiment, segment: ensure_study(experiment, storage=storage))
    monkeypatch.setattr(
        local, "load_study", lambda experiment: optuna.load_study(study_name=experiment.name, storage=storage)
    )

    after = local._wait_for_slots(study, experiment, segment=1)

    assert plan_slots(after, experiment) == [0, 1]
    assert sleeps == [5, 5, 5]  # 5 s beats, 15 s grace: stale after the third
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 3 and all("2 trial(s) of an earlier run" in line for line in said)
    assert [line.split("at most ")[1].split(" s more")[0] for line in said] == ["15", "10", "5"]
