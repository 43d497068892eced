"""Budget accounting and the stop decision: pure functions of the trials, and thin readers of a study.

The rules are checked before every trial (``stop_before_trial``) and after every segment (``decide``);
of several that hold, the reason given is the one that held first, which a suggest step records on
the study (``FIRST_STOP_RULE``). Like Syne Tune's stopping criterion, the rules only read the
trials: the pure functions take them as values, so they are tested without a database.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune.spec import Budget, Experiment, grid_points

__all__ = [
    "FIRST_STOP_RULE",
    "Counts",
    "Decision",
    "count",
    "count_trials",
    "decide",
    "first_held",
    "held_rules",
    "plan_slots",
    "slots",
    "stop_before_trial",
]

FIRST_STOP_RULE = "stop_rule"  # study attribute: the stop rule a suggest step found holding first
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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


@dataclass(frozen=True)
class Decision:
    go_on: bool
    reason: str


def count(trials: Sequence[FrozenTrial]) -> Counts:
    """The trials by state, and how many failed trials were retried (they do not consume the budget)."""
    by_state = collections.Counter(t.state for t in trials)  # one pass: a study may hold 100,000 trials
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


def slots(counts: Counts, budget: Budget) -> list[int]:
    """Slot indices for a segment: at most trialsPerSegment, never past the trial budget."""
    remaining = budget.max_trials - counts.consumed - counts.running
    return list(range(max(0, min(budget.trials_per_segment, remaining))))


def _improves(value: float, best: float | None, direction: str) -> bool:
    return best is None or (value > best if direction == "maximize" else value < best)


def _target_reached(complete: Sequence[FrozenTrial], target: float | None, direction: str) -> bool:
    """Whether the best completed value reached ``target`` (the spec allows a target for one objective only)."""
    if target is None or not complete:
        return False
    firsts = [t.values[0] for t in complete]
    return max(firsts) >= target if direction == "maximize" else min(firsts) <= target


def _patience_exhausted(complete: Sequence[FrozenTrial], patience: int, direction: str) -> bool:
    """Whether the last ``patience`` completed trials, in the order they completed, improved on none before."""
    ordered = sorted(complete, key=lambda t: t.datetime_complete or dt.datetime.min)
    best, since = None, 0
    for trial in ordered:
        if _improves(trial.values[0], best, direction):
            best, since = trial.values[0], 0
        else:
            since += 1
    return since >= patience


def _grid_covered(trials: Sequence[FrozenTrial], experiment: Experiment) -> bool:
    """Every configuration of a grid search has been tried: another trial could only repeat one."""
    if experiment.spec.strategy.sampler.name != "grid":
        return False
    tried = {tuple(sorted(t.params.items())) for t in trials if t.state in FINISHED}
    return len(tried) >= grid_points(experiment.spec)


def held_rules(
    experiment: Experiment,
    trials: Sequence[FrozenTrial],
    *,
    elapsed_seconds: float,
    segments_finished: int | None,
) -> list[tuple[str, str]]:
    """The stop rules that hold, as (rule, reason) in the spec's order; maxSegments only between segments."""
    budget = experiment.spec.budget
    counts = count(trials)
    direction = experiment.spec.directions[0]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    rules = [
        (
            "maxTrials",
            counts.consumed >= budget.max_trials,
            f"maxTrials reached ({counts.consumed} of {budget.max_trials})",
        ),
        (
            "maxDuration",
            budget.max_duration_seconds is not None and elapsed_seconds >= budget.max_duration_seconds,
            f"maxDuration {budget.max_duration} reached",
        ),
        (
            "targetValue",
            _target_reached(complete, budget.target_value, direction),
            f"targetValue {budget.target_value} reached",
        ),
        (
            "patience",
            budget.patience is not None and _patience_exhausted(complete, budget.patience, direction),
            f"patience: no improvement in the last {budget.patience} completed trials",
        ),
        (
            "grid",
            _grid_covered(trials, experiment),
            "the grid is covered: every configuration was tried",
        ),
        (
            "maxSegments",
            segments_finished is not None and segments_finished >= budget.max_segments,
            f"maxSegments reached ({budget.max_segments})",
        ),
    ]
    return [(rule, reason) for rule, holds, reason in rules if holds]


def first_held(held: list[tuple[str, str]], recorded: str | None) -> tuple[str, str]:
    """The rule recorded as holding first, if it still holds; else the first in the spec's order."""
    return next((rule for rule in held if rule[0] == recorded), held[0])


# Readers of a study: what the steps call.


def count_trials(study: optuna.Study) -> Counts:
    return count(study.get_trials(deepcopy=False))


def plan_slots(study: optuna.Study, experiment: Experiment) -> list[int]:
    """Slot indices for this segment: at most trialsPerSegment, never past the trial budget."""
    return slots(count_trials(study), experiment.spec.budget)


def _held_now(study: optuna.Study, experiment: Experiment, *, segments_finished: int | None) -> list[tuple[str, str]]:
    started = dt.datetime.fromisoformat(study.user_attrs["started_at"])
    return held_rules(
        experiment,
        study.get_trials(deepcopy=False),
        elapsed_seconds=(dt.datetime.now(dt.UTC) - started).total_seconds(),
        segments_finished=segments_finished,
    )


def stop_before_trial(study: optuna.Study, experiment: Experiment) -> str | None:
    """Why no new trial may start (a stop rule holds), or None; the rule is recorded if it held first.

    Checked before every trial, so a reached targetValue or maxDuration ends the search within the
    segment instead of after it; trials already running finish.
    """
    held = _held_now(study, experiment, segments_finished=None)
    if not held:
        return None
    recorded = study.user_attrs.get(FIRST_STOP_RULE)
    rule, reason = first_held(held, recorded)
    if recorded != rule:
        study.set_user_attr(FIRST_STOP_RULE, rule)
    return reason


def decide(study: optuna.Study, experiment: Experiment, *, segments_finished: int) -> Decision:
    """Whether the experiment goes on after its ``segments_finished``-th segment, and why it stops if not.

    Segments count per experiment, over every spec's chain of runs, as ``maxSegments`` says. Of several
    rules that hold, the reason is the one that held first (see stop_before_trial).
    """
    held = _held_now(study, experiment, segments_finished=segments_finished)
    if held:
        return Decision(False, first_held(held, study.user_attrs.get(FIRST_STOP_RULE))[1])
    budget = experiment.spec.budget
    return Decision(True, f"{count_trials(study).consumed} of {budget.max_trials} trials done")
