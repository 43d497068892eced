"""What kubetune's own samplers (evolution, rl) read from the study, and their per-trial random streams.

Their state is the study alone: each suggest step is a fresh process and lanes share one study, so a
trial's draws depend only on the sampler's seed and the trial's number, never on what a process drew before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["IndependentSampler", "TrialRandom", "TrialStreams", "scored_trials"]

# Resampling a numeric parameter to a different value takes one draw unless its range is a handful of values.
MAX_REDRAWS = 1000


class TrialRandom:
    """The random stream of one trial: ``rng`` for the sampler's own choices, ``draw`` for a parameter."""

    def __init__(self, entropy: list[int], number: int) -> None:
        self.rng = np.random.default_rng([*entropy, number])
        self._uniform = optuna.samplers.RandomSampler(seed=int(self.rng.integers(2**32)))

    def draw(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution) -> Any:
        """A value of ``distribution`` drawn uniformly, as Optuna's RandomSampler draws it."""
        return self._uniform.sample_independent(study, trial, name, distribution)

    def draw_other(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution, current: Any
    ) -> Any:
        """A value of ``distribution`` other than ``current``; the distribution must have more than one."""
        if isinstance(distribution, CategoricalDistribution):
            others = [c for c in distribution.choices if c != current]
            return others[int(self.rng.integers(len(others)))]
        for _ in range(MAX_REDRAWS):
            value = self.draw(study, trial, name, distribution)
            if value != current:
                return value
        raise ValueError(f"parameter {name!r}: no value other than {current!r} in {distribution}")


class TrialStreams:
    """Makes each trial's stream from the sampler's seed; without a seed, from fresh entropy per sampler."""

    def __init__(self, seed: int | None) -> None:
        fresh = np.random.SeedSequence().generate_state(4)
        self._entropy = [seed] if seed is not None else [int(word) for word in fresh]

    def for_trial(self, number: int) -> TrialRandom:
        return TrialRandom(self._entropy, number)


def scored_trials(study: optuna.Study) -> list[tuple[FrozenTrial, float]]:
    """The completed trials by number, each with its score: the objective, negated when it is minimized."""
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    completed = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    return [(trial, sign * value) for trial in completed if (value := trial.value) is not None]


class IndependentSampler(optuna.samplers.BaseSampler):
    """A sampler that draws every parameter on its own, when the trial suggests it: conditional ones work."""

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}
