"""Regressions (issue 9, point 12): stop rules are checked before each new trial, and the reason given is the
first rule that held. Lanes are suggest steps in-process against a SQLite study; tells stand in for training."""

from __future__ import annotations

import datetime as dt

import pytest
from optuna.trial import TrialState

from kubetune.search import NO_TRIAL, suggest_trial
from kubetune.spec import parse_experiment
from kubetune.stop_rules import decide
from kubetune.study import ensure_study, tell_once

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]


@pytest.fixture
def make(minimal_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STORAGE", f"sqlite:///{tmp_path}/optuna.db")

    def build(budget: dict, **spec):
        minimal_spec["spec"].update(
            parameters={"lr": {"type": "float", "low": 0.1, "high": 0.2, "step": 0.1}},
            budget={"maxTrials": 10, "trialsPerSegment": 10, "parallelTrials": 2, **budget},
            **spec,
        )
        experiment = parse_experiment(minimal_spec)
        return experiment, ensure_study(experiment)

    return build


def _lane(experiment, slot: int) -> int:
    return suggest_trial(experiment, segment=0, slot=slot)


def test_a_reached_target_starts_no_new_trial_in_the_segment(make):
    experiment, study = make({"targetValue": 0.9})
    first = _lane(experiment, 0)
    tell_once(study, first, state=TrialState.COMPLETE, values=[0.95])
    assert [_lane(experiment, slot) for slot in (1, 2, 3)] == [NO_TRIAL] * 3
    assert len(study.trials) == 1
    assert decide(study, experiment, segments_finished=1).reason == "targetValue 0.9 reached"


def test_max_duration_starts_no_new_trial_once_passed(make):
    experiment, study = make({"maxDuration": "1s"})
    _lane(experiment, 0)
    study.set_user_attr("started_at", (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)).isoformat())
    assert _lane(experiment, 1) == NO_TRIAL
    assert len(study.trials) == 1


def test_the_reason_given_is_the_rule_that_held_first(make):
    """targetValue held first; maxDuration passed while the other lane's trial still trained."""
    experiment, study = make({"targetValue": 0.9, "maxDuration": "1h"})
    reached, other = _lane(experiment, 0), _lane(experiment, 1)
    tell_once(study, reached, state=TrialState.COMPLETE, values=[0.95])
    assert _lane(experiment, 2) == NO_TRIAL
    study.set_user_attr("started_at", (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat())
    tell_once(study, other, state=TrialState.COMPLETE, values=[0.5])
    assert decide(study, experiment, segments_finished=1).reason == "targetValue 0.9 reached"


def test_a_covered_grid_starts_no_repeated_trial(make):
    experiment, study = make({}, strategy={"sampler": {"name": "grid", "seed": 0}})
    for slot in (0, 1):  # lr 0.1 and 0.2: the whole grid
        tell_once(study, _lane(experiment, slot), state=TrialState.COMPLETE, values=[0.5])
    assert sorted(t.params["lr"] for t in study.trials) == [0.1, 0.2]
    assert _lane(experiment, 2) == NO_TRIAL
    assert decide(study, experiment, segments_finished=1).reason == "the grid is covered: every configuration was tried"
