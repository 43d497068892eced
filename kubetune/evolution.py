"""Regularized evolution (Real et al. 2019, "aging evolution") as an Optuna sampler.

The population is the last ``population`` completed trials by number, so the oldest member ages out by
construction and the state is the study alone: every lane and pod rebuilds it from the database. A child
copies a parent chosen by tournament and mutates exactly one of its parameters, an architecture choice or
a hyperparameter alike. Until the population is full, trials are random.

Parameters are sampled one by one (``sample_independent``), so conditional ones work: a parameter the
parent lacks (a block that a mutated ``arch.blocks`` adds, a hyperparameter whose ``when`` now holds) is
drawn at random. Under a Hyperband pruner Optuna shows a sampler only the trials of the trial's bracket,
so each bracket evolves its own population.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from kubetune.sampler_state import IndependentSampler, TrialRandom, TrialStreams, scored_trials

__all__ = ["RegularizedEvolutionSampler"]


@dataclass(frozen=True)
class _Plan:
    """What a trial copies: the parent (None while the population fills) and the one parameter it mutates."""

    random: TrialRandom
    parent: FrozenTrial | None = None
    mutated: str | None = None


class RegularizedEvolutionSampler(IndependentSampler):
    """Tournament of ``tournament`` members of the last ``population`` completed trials; one mutation each."""

    def __init__(self, *, population: int = 20, tournament: int = 5, seed: int | None = None) -> None:
        if not 2 <= tournament <= population:
            raise ValueError(f"tournament must be in [2, population={population}] but got {tournament}")
        self._population = population
        self._tournament = tournament
        self._streams = TrialStreams(seed)
        self._plans: dict[int, _Plan] = {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        plan = self._plan(study, trial)
        parent = plan.parent
        if parent is None or parent.distributions.get(param_name) != param_distribution:
            return plan.random.draw(study, trial, param_name, param_distribution)
        if param_name == plan.mutated:
            return plan.random.draw_other(study, trial, param_name, param_distribution, parent.params[param_name])
        return parent.params[param_name]

    def parent_of(self, trial_number: int) -> int | None:
        """The number of the trial that trial ``trial_number`` mutated, once this sampler sampled it; else None."""
        plan = self._plans.get(trial_number)
        return None if plan is None or plan.parent is None else plan.parent.number

    def trial_attrs(self, trial_number: int) -> dict:
        """``parent_trial`` for a child, so the train step can inherit its parent's weights; else nothing."""
        parent = self.parent_of(trial_number)
        return {} if parent is None else {"parent_trial": parent}

    def _plan(self, study: optuna.Study, trial: FrozenTrial) -> _Plan:
        """Chosen at the trial's first sampled parameter, from the trials completed by then."""
        if trial.number not in self._plans:
            self._plans[trial.number] = self._choose(study, trial.number)
        return self._plans[trial.number]

    def _choose(self, study: optuna.Study, number: int) -> _Plan:
        random = self._streams.for_trial(number)
        members = scored_trials(study)[-self._population :]
        if len(members) < self._population:
            return _Plan(random)
        drawn = sorted(random.rng.choice(len(members), size=self._tournament, replace=False))
        parent, _ = max((members[i] for i in drawn), key=lambda member: member[1])  # ties: the older member
        mutable = sorted(name for name, distribution in parent.distributions.items() if not distribution.single())
        mutated = mutable[int(random.rng.integers(len(mutable)))] if mutable else None
        return _Plan(random, parent, mutated)
