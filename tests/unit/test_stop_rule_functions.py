"""kubetune.stop_rules' pure functions: budget accounting and the stop rules over trials as values, no database."""

from __future__ import annotations

import datetime as dt

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from kubetune.spec import parse_experiment
from kubetune.stop_rules import Counts, count, first_held, held_rules, slots


@pytest.fixture
def make(minimal_spec):
    def build(objective=None, strategy=None, **budget):
        if objective is not None:
            minimal_spec["spec"]["objective"] = objective
        if strategy is not None:
            minimal_spec["spec"]["strategy"] = strategy
        minimal_spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 0.1, "high": 0.2, "step": 0.1}}
        minimal_spec["spec"]["budget"] = {"maxTrials": 50, **budget}
        return parse_experiment(minimal_spec)

    return build


def _trial(
    state: TrialState, value: float | list[float] | None = None, *, minute: int = 0, **system_attrs
) -> FrozenTrial:
    values = None if value is None else (value if isinstance(value, list) else [value])
    trial = create_trial(state=state, values=values, system_attrs=system_attrs or None)
    if state.is_finished():
        trial.datetime_complete = dt.datetime(2026, 1, 1) + dt.timedelta(minutes=minute)
    return trial


def _rules(experiment, trials, *, elapsed_seconds=0.0, segments_finished=None) -> list[str]:
    held = held_rules(experiment, trials, elapsed_seconds=elapsed_seconds, segments_finished=segments_finished)
    return [rule for rule, _ in held]


def test_count_by_state_and_retried_failures():
    trials = [
        _trial(TrialState.COMPLETE, 0.5),
        _trial(TrialState.PRUNED, 0.1),
        _trial(TrialState.FAIL),
        _trial(TrialState.FAIL, failed_trial=2, retry_history=[2]),
        _trial(TrialState.WAITING, failed_trial=2, retry_history=[2, 3]),
        _trial(TrialState.RUNNING),
    ]
    counts = count(trials)
    assert counts == Counts(complete=1, pruned=1, failed=2, running=1, waiting=1, retried=2)
    assert counts.consumed == 2


@pytest.mark.parametrize(
    "consumed, running, expected",
    [(0, 0, [0, 1, 2, 3]), (5, 1, [0, 1, 2, 3]), (7, 1, [0, 1]), (8, 2, []), (11, 0, [])],
)
def test_slots_stop_at_the_segment_and_the_budget(make, consumed, running, expected):
    budget = make(maxTrials=10, trialsPerSegment=4).spec.budget
    assert slots(Counts(consumed, 0, 0, running, 0, 0), budget) == expected


def test_no_rule_holds_for_a_fresh_study(make):
    assert _rules(make(), []) == []


def test_max_trials_counts_finished_trials_less_retried_failures(make):
    experiment = make(maxTrials=2)
    assert _rules(experiment, [_trial(TrialState.COMPLETE, 0.5), _trial(TrialState.FAIL)]) == ["maxTrials"]
    retried = [_trial(TrialState.COMPLETE, 0.5), _trial(TrialState.FAIL), _trial(TrialState.WAITING, retry_history=[1])]
    assert _rules(experiment, retried) == []


def test_max_duration_from_the_elapsed_time(make):
    experiment = make(maxDuration="1m")
    assert _rules(experiment, [], elapsed_seconds=59) == []
    assert _rules(experiment, [], elapsed_seconds=60) == ["maxDuration"]


@pytest.mark.parametrize(
    "objective, values, holds",
    [
        ({"metric": "val_accuracy"}, [0.5, 0.9], True),
        ({"metric": "val_accuracy"}, [0.5, 0.89], False),
        ({"metric": "val_loss"}, [0.5, 0.1], True),
        ({"metric": "val_loss"}, [0.5, 0.11], False),
    ],
)
def test_target_value_by_the_objectives_direction(make, objective, values, holds):
    target = 0.9 if objective["metric"] == "val_accuracy" else 0.1
    experiment = make(objective=objective, targetValue=target)
    trials = [_trial(TrialState.COMPLETE, value) for value in values]
    assert _rules(experiment, trials) == (["targetValue"] if holds else [])


def test_target_value_ignores_pruned_trials(make):
    assert _rules(make(targetValue=0.9), [_trial(TrialState.PRUNED, 0.95)]) == []


def test_patience_counts_completed_trials_in_the_order_they_completed(make):
    experiment = make(patience=2)
    # Trial numbers say 0.7 came last, but it completed first: two trials since without improvement.
    trials = [_trial(TrialState.COMPLETE, 0.5, minute=1), _trial(TrialState.COMPLETE, 0.6, minute=2)]
    trials.append(_trial(TrialState.COMPLETE, 0.7, minute=0))
    assert _rules(experiment, trials) == ["patience"]
    trials[2] = _trial(TrialState.COMPLETE, 0.7, minute=3)
    assert _rules(experiment, trials) == []


def test_grid_is_covered_once_every_point_finished(make):
    experiment = make(strategy={"sampler": {"name": "grid", "seed": 0}})
    lr = FloatDistribution(0.1, 0.2, step=0.1)

    def tried(value: float, state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
        return create_trial(
            state=state, params={"lr": value}, distributions={"lr": lr}, value=0.5 if state.is_finished() else None
        )

    assert _rules(experiment, [tried(0.1), tried(0.1)]) == []
    assert _rules(experiment, [tried(0.1), tried(0.2, TrialState.RUNNING)]) == []
    assert _rules(experiment, [tried(0.1), tried(0.2)]) == ["grid"]
    random = make(strategy={"sampler": {"name": "random", "seed": 0}})
    assert _rules(random, [tried(0.1), tried(0.2)]) == []  # not a grid search


def test_max_segments_only_between_segments(make):
    experiment = make(maxSegments=2)
    assert _rules(experiment, [], segments_finished=None) == []
    assert _rules(experiment, [], segments_finished=1) == []
    assert _rules(experiment, [], segments_finished=2) == ["maxSegments"]


def test_rules_are_given_in_the_specs_order_with_their_reasons(make):
    experiment = make(maxTrials=1, targetValue=0.9, maxDuration="1m", maxSegments=1)
    held = held_rules(experiment, [_trial(TrialState.COMPLETE, 0.95)], elapsed_seconds=61, segments_finished=1)
    assert held == [
        ("maxTrials", "maxTrials reached (1 of 1)"),
        ("maxDuration", "maxDuration 1m reached"),
        ("targetValue", "targetValue 0.9 reached"),
        ("maxSegments", "maxSegments reached (1)"),
    ]


def test_the_first_held_rule_is_the_recorded_one_while_it_holds():
    held = [("maxTrials", "a"), ("targetValue", "b")]
    assert first_held(held, "targetValue") == ("targetValue", "b")
    assert first_held(held, "patience") == ("maxTrials", "a")  # recorded, but no longer holds
    assert first_held(held, None) == ("maxTrials", "a")
