"""The curve pruner: its fits extrapolate saturating curves, its probability orders curves, and it prunes in a
real Optuna study only when a trusted fit says the trial cannot catch up."""

from __future__ import annotations

import math
import re

import numpy as np
import optuna
import pytest

from kubetune.curve_pruner import CurvePruner, extrapolate, probability_to_beat
from kubetune.samplers import make_pruner
from kubetune.spec import parse_experiment

STEPS = np.arange(1, 11, dtype=float)
# Saturating curves of the shapes real validation accuracy takes; each is known at step 10.
CURVES = {
    "power": lambda x: 0.95 - 0.5 * x**-1.2,
    "exponential": lambda x: 0.9 - 0.6 * np.exp(-0.4 * x),
    "mmf": lambda x: 0.92 - 0.7 / (1 + (0.5 * x) ** 1.5),
}


def _noisy(curve, seed: int) -> np.ndarray:
    return curve(STEPS) + np.random.default_rng(seed).normal(0.0, 0.005, STEPS.size)


@pytest.mark.parametrize("shape", CURVES)
@pytest.mark.parametrize(("seen", "tolerance"), [(6, 0.04), (8, 0.02)])
def test_the_ensemble_extrapolates_a_saturating_curve_near_its_truth(shape, seen, tolerance):
    for seed in range(10):
        members = extrapolate(STEPS[:seen], _noisy(CURVES[shape], seed)[:seen], at=10)
        assert len(members) >= 2, members
        assert math.isclose(sum(m.weight for m in members), 1.0)
        mean = sum(m.weight * m.mean for m in members)
        assert abs(mean - CURVES[shape](10.0)) < tolerance, (shape, seed, mean, members)


@pytest.mark.parametrize("shape", CURVES)
def test_the_probability_falls_for_a_clearly_worse_curve_and_stays_high_for_a_better_one(shape):
    truth = CURVES[shape](10.0)
    values = _noisy(CURVES[shape], seed=1)[:6]
    worse = probability_to_beat(STEPS[:6], values, incumbent=truth + 0.1, at=10)
    close = probability_to_beat(STEPS[:6], values, incumbent=truth + 0.01, at=10)
    better = probability_to_beat(STEPS[:6], values, incumbent=truth - 0.1, at=10)
    assert worse < 0.01 and better > 0.99, (worse, better)
    assert worse < close < better


@pytest.mark.parametrize("seen", [5, 6, 7, 8])
def test_a_slow_starter_is_not_held_against_it(seen):
    """A sigmoid (a net that starts slowly) is no family's shape; the rising families then overshoot its
    end rather than undershoot it, so such a trial is kept rather than pruned."""
    sigmoid = lambda x: 0.1 + 0.8 / (1 + np.exp(-(x - 2.0)))  # noqa: E731
    for seed in range(10):
        values = (sigmoid(STEPS) + np.random.default_rng(seed).normal(0.0, 0.005, STEPS.size))[:seen]
        assert probability_to_beat(STEPS[:seen], values, incumbent=sigmoid(10.0) - 0.01, at=10) > 0.5


def test_a_curve_too_short_for_two_families_is_kept():
    values = CURVES["power"](STEPS)[:4]
    assert len(extrapolate(STEPS[:4], values, at=10)) == 1  # only the two-parameter family fits four points
    assert probability_to_beat(STEPS[:4], values, incumbent=5.0, at=10) == 1.0


@pytest.mark.parametrize(
    "values",
    [
        [0.1] * 8,  # flat: a dead network, or one that has not started
        [0.2, 0.8, 0.2, 0.8, 0.2, 0.8, 0.2, 0.8],  # no rising curve explains it
        [math.nan] * 8,
        [0.3, math.nan, 0.4, math.inf, 0.45, -math.inf, math.nan, 0.5],  # three finite points are too few
        [],
    ],
    ids=["flat", "zigzag", "all-nan", "mostly-not-finite", "empty"],
)
def test_garbage_curves_are_kept(values):
    steps = STEPS[: len(values)]
    assert probability_to_beat(steps, values, incumbent=0.99, at=10) == 1.0


def test_pure_noise_is_almost_always_kept():
    """A rising family fits noise only when the draw happens to rise; at most a few of 40 draws may look so."""
    pruned = [
        seed
        for seed in range(40)
        if probability_to_beat(STEPS[:7], np.random.default_rng(seed).normal(0.5, 0.1, 7), incumbent=0.9, at=10) < 0.05
    ]
    assert len(pruned) <= 4, pruned


def _study(direction: str, pruner: optuna.pruners.BasePruner, finals) -> optuna.Study:
    """A real in-memory study whose completed trials reported these curves and ended at their last value."""
    study = optuna.create_study(direction=direction, pruner=pruner)
    for curve in finals:
        trial = study.ask()
        for step, value in enumerate(curve, start=1):
            trial.report(float(value), step)
        study.tell(trial, float(curve[-1]))
    return study


def _pruned_at(study: optuna.Study, curve) -> int | None:
    """The step at which the pruner stops a trial reporting ``curve``; None when it runs to the end."""
    trial = study.ask()
    for step, value in enumerate(curve, start=1):
        trial.report(float(value), step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    final = float(curve[-1])
    if math.isfinite(final):
        study.tell(trial, final)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return None


GOOD = [_noisy(CURVES["power"], seed) + 0.02 for seed in range(3)]  # end near 0.94
WORSE = 0.75 - 0.5 * STEPS**-1.2  # ends near 0.72
BETTER = 0.99 - 0.5 * STEPS**-1.2


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_pruner_stops_a_worse_trial_and_keeps_a_better_one_in_a_real_study(direction):
    sign = 1.0 if direction == "maximize" else -1.0  # a minimised metric: the same curves, negated
    pruner = CurvePruner(max_resource=10, n_startup_trials=3)
    study = _study(direction, pruner, [sign * c for c in GOOD])
    step = _pruned_at(study, sign * WORSE)
    assert step is not None and 5 <= step < 10, step  # two families need five points
    assert _pruned_at(study, sign * BETTER) is None
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 3 + ["PRUNED", "COMPLETE"]


def test_nothing_is_pruned_before_the_startup_trials_or_the_minimum_resource():
    few = _study("maximize", CurvePruner(max_resource=10, n_startup_trials=4), GOOD)
    assert _pruned_at(few, WORSE) is None
    late = _study("maximize", CurvePruner(max_resource=10, min_resource=8, n_startup_trials=3), GOOD)
    assert _pruned_at(late, WORSE) == 8


def test_garbage_reported_to_a_real_study_is_never_pruned():
    study = _study("maximize", CurvePruner(max_resource=10, n_startup_trials=1), GOOD)
    assert _pruned_at(study, [0.1] * 10) is None
    assert _pruned_at(study, [0.2, 0.8] * 5) is None
    assert _pruned_at(study, [math.nan] * 10) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_resource": 0}, "max_resource must be at least 1 but got 0"),
        ({"max_resource": 10, "threshold": 1.0}, "threshold must be in (0, 1) but got 1.0"),
        ({"max_resource": 10, "threshold": 0.0}, "threshold must be in (0, 1) but got 0.0"),
        ({"max_resource": 10, "min_resource": 0}, "min_resource must be at least 1 but got 0"),
        ({"max_resource": 10, "n_startup_trials": -1}, "n_startup_trials must be at least 0 but got -1"),
    ],
)
def test_bad_arguments_are_refused_with_the_rule_and_the_value(arguments, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CurvePruner(**arguments)


def test_the_threshold_is_the_probability_below_which_a_trial_stops():
    curve = 0.97 - 0.5 * STEPS[:6] ** -1.2  # ends just below the best of GOOD
    best = max(c[-1] for c in GOOD)
    chance = probability_to_beat(STEPS[:6], curve, incumbent=best, at=10)
    assert 0.01 < chance < 0.9, chance  # a curve that might just catch up
    for threshold, pruned in ((chance * 1.01, 6), (chance * 0.99, None)):
        pruner = CurvePruner(max_resource=10, threshold=threshold, min_resource=6, n_startup_trials=3)
        study = _study("maximize", pruner, GOOD)
        assert _pruned_at(study, curve) == pruned, threshold


def test_the_spec_builds_the_curve_pruner_with_its_options(digits_spec):
    digits_spec["spec"]["strategy"]["pruner"] = {"name": "curve", "minResource": 7, "startupTrials": 2}
    experiment = parse_experiment(digits_spec)
    pruner = make_pruner(experiment)
    assert isinstance(pruner, CurvePruner)
    assert experiment.spec.trial.epochs == 10  # the pruner's horizon
    # With the defaults (startupTrials 5, minResource 1) two completed trials would prune nothing.
    study = _study("maximize", pruner, GOOD[:2])
    assert _pruned_at(study, WORSE) == 7
