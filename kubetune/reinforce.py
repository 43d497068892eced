"""A REINFORCE controller (Zoph & Le 2017) as an Optuna sampler: a factorised softmax over every choice.

Each parameter has its own vector of logits, one per arm: a categorical parameter's choices, or for a
numeric one its values when it has at most NUMERIC_BINS of them, else NUMERIC_BINS equal slices of its
range (log-scaled when the parameter is), a value then drawn uniformly inside the chosen slice.

The policy is never stored: before each trial it is rebuilt by replaying the update over the study's
completed trials in trial-number order, so every lane and pod sees the same policy and a killed search
resumes identically. Each completed trial's score (its objective, negated when minimized) updates the
logits of the arms it chose by ``LEARNING_RATE * advantage * (one_hot - probabilities)``, the gradient of
log-probability; the advantage is the score minus a moving-average baseline (decay ``BASELINE_DECAY``),
divided by a moving average of its own size so that the step does not depend on the objective's units.
Every parameter's logits move with each trial, so the step is small: a larger one, or a slower baseline,
let the policy collapse onto the first good trial's choices within a few trials.
Pruned and failed trials have no score and do not move the policy. Under a Hyperband pruner Optuna shows a
sampler only the trials of the trial's bracket, so the policy is rebuilt from that bracket's trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from kubetune.sampler_state import IndependentSampler, TrialRandom, TrialStreams, scored_trials

__all__ = ["BASELINE_DECAY", "LEARNING_RATE", "NUMERIC_BINS", "Policy", "ReinforceSampler", "policy_from"]

LEARNING_RATE = 0.1  # on the logits, per completed trial, for an advantage of one typical deviation
BASELINE_DECAY = 0.8  # the baseline and the deviation scale average over about the last 5 scores
NUMERIC_BINS = 5


def _grid(distribution: IntDistribution | FloatDistribution) -> list[float] | None:
    """A numeric parameter's values when it has at most NUMERIC_BINS of them, else None."""
    if distribution.step is None:
        return None
    count = round((distribution.high - distribution.low) / distribution.step) + 1
    if count > NUMERIC_BINS:
        return None
    return [distribution.low + i * distribution.step for i in range(count)]


def arms(distribution: BaseDistribution) -> int:
    """How many arms the policy has for a parameter."""
    if isinstance(distribution, CategoricalDistribution):
        return len(distribution.choices)
    assert isinstance(distribution, (IntDistribution, FloatDistribution))
    grid = _grid(distribution)
    return NUMERIC_BINS if grid is None else len(grid)


def _position(distribution: IntDistribution | FloatDistribution, value: float) -> float:
    """Where ``value`` lies in the range, from 0 to 1, on a log scale for a log parameter."""
    low, high = distribution.low, distribution.high
    if distribution.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def arm_of(distribution: BaseDistribution, value: Any) -> int:
    """The arm that chose ``value``."""
    if isinstance(distribution, CategoricalDistribution):
        return int(distribution.to_internal_repr(value))
    assert isinstance(distribution, (IntDistribution, FloatDistribution))
    grid = _grid(distribution)
    if grid is not None:
        return int(np.argmin([abs(v - value) for v in grid]))
    return min(int(_position(distribution, value) * NUMERIC_BINS), NUMERIC_BINS - 1)


def _value_in(distribution: BaseDistribution, arm: int, rng: np.random.Generator) -> Any:
    """A value of the arm: the choice, the grid value, or a uniform draw inside the slice of the range."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[arm]
    assert isinstance(distribution, (IntDistribution, FloatDistribution))
    grid = _grid(distribution)
    if grid is not None:
        value = grid[arm]
    else:
        low, high = distribution.low, distribution.high
        position = (arm + rng.uniform()) / NUMERIC_BINS
        if distribution.log:
            value = math.exp(math.log(low) + position * (math.log(high) - math.log(low)))
        else:
            value = low + position * (high - low)
        if distribution.step is not None:
            value = low + round((value - low) / distribution.step) * distribution.step
        value = min(max(value, low), high)
    return round(value) if isinstance(distribution, IntDistribution) else float(value)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


@dataclass
class Policy:
    """The controller: logits per parameter, the baseline and the typical deviation from it."""

    learning_rate: float = LEARNING_RATE
    baseline_decay: float = BASELINE_DECAY
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    baseline: float | None = None
    deviation: float | None = None

    def probabilities(self, name: str, distribution: BaseDistribution) -> np.ndarray:
        return _softmax(self._logits(name, distribution))

    def _logits(self, name: str, distribution: BaseDistribution) -> np.ndarray:
        """A parameter's logits; zeros (a uniform policy) before its first update."""
        logits = self.logits.get(name)
        return np.zeros(arms(distribution)) if logits is None or len(logits) != arms(distribution) else logits

    def update(self, trial: FrozenTrial, score: float) -> None:
        """One REINFORCE step for a completed trial's choices; the first score only sets the baseline."""
        if self.baseline is None:
            self.baseline = score
            return
        difference = score - self.baseline
        if self.deviation is None and difference:
            self.deviation = abs(difference)
        advantage = difference / self.deviation if self.deviation else 0.0
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            if distribution.single():
                continue
            logits = self._logits(name, distribution)
            gradient = -_softmax(logits)
            gradient[arm_of(distribution, value)] += 1.0
            self.logits[name] = logits + self.learning_rate * advantage * gradient
        decay = self.baseline_decay
        self.baseline = decay * self.baseline + (1 - decay) * score
        if self.deviation is not None:
            self.deviation = decay * self.deviation + (1 - decay) * abs(difference)


def policy_from(study: optuna.Study) -> Policy:
    """The policy after replaying the study's completed trials in trial-number order."""
    policy = Policy()
    for trial, score in scored_trials(study):
        policy.update(trial, score)
    return policy


@dataclass(frozen=True)
class _TrialState:
    policy: Policy
    random: TrialRandom


class ReinforceSampler(IndependentSampler):
    """Draws every parameter from the policy rebuilt from the study when the trial samples its first one."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._streams = TrialStreams(seed)
        self._trials: dict[int, _TrialState] = {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if trial.number not in self._trials:
            self._trials[trial.number] = _TrialState(policy_from(study), self._streams.for_trial(trial.number))
        state = self._trials[trial.number]
        if param_distribution.single():
            return state.random.draw(study, trial, param_name, param_distribution)
        probabilities = state.policy.probabilities(param_name, param_distribution)
        arm = int(state.random.rng.choice(len(probabilities), p=probabilities))
        return _value_in(param_distribution, arm, state.random.rng)
