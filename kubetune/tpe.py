"""Optuna's TPE sampler with the work its parameter groups share done once per ask.

With ``group=True`` TPE samples each group of parameters that appear together on its own (here: the
hyperparameters, each architecture block, each conditional kernel size); with constant liar it reads
every trial from the database again for each group, and it recomputes each finished trial's
observations for every ask. This subclass changes only where the trials come from and what is
remembered, never how TPE samples: it suggests what TPESampler suggests (checked against Optuna's in
tests/services/test_concurrency.py and benchmarks/study_throughput.py; the gain is in
benchmarks/README.md).

Optuna has no public hook for either, so the private parts touched (marked ``Optuna internal``) are
all here, and the Optuna minor version is pinned in pyproject.toml.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.trial import FrozenTrial, TrialState

__all__ = ["TPESampler"]

_UNSEEN = object()


class _GroupsSeenOnce(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition, adding each finished trial once instead of all trials every time.

    Optuna internal: TPESampler's ``_group_decomposed_search_space``. A finished trial never changes
    and adding the same parameter set again leaves the groups as they are, so the groups are exactly
    Optuna's; the cost per trial no longer grows with the study.
    """

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = (TrialState.COMPLETE, TrialState.PRUNED) if self._include_pruned else (TrialState.COMPLETE,)
        with self._lock:
            for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
                if trial.number not in self._seen:
                    self._search_space.add_distributions(trial.distributions)
                    self._seen.add(trial.number)
            return copy.deepcopy(self._search_space)


class _OneReadPerAsk:
    """The study as one ask sees it: each read of its trials is served from Optuna's per-ask cache.

    Optuna internal: the cache (``Study._get_trials(use_cache=True)``) is filled after the asked trial
    was created, so it holds every trial running then, which constant liar needs; a lane that starts
    within the same milliseconds is seen by the next ask instead of by a later group of this one.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=True)


class TPESampler(optuna.samplers.TPESampler):
    """TPESampler reading the trials once per ask, with an incremental group decomposition and cached observations."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _GroupsSeenOnce(True)
        self._rows: dict[tuple, dict[int, tuple | None]] = {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(cast(optuna.Study, _OneReadPerAsk(study)), trial, search_space)

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study: optuna.Study
    ) -> dict[str, np.ndarray]:
        """Optuna's per-group observations, remembering each finished trial's row (it never changes).

        Optuna internal: the method TPESampler builds its Parzen estimators from.
        """
        names = list(search_space)
        cache = self._rows.setdefault((study._study_id, tuple(search_space.items())), {})
        rows = []
        for trial in trials:
            finished = trial.state.is_finished()
            row = cache.get(trial.number, _UNSEEN) if finished else _UNSEEN
            if row is _UNSEEN:
                params = self._get_params(trial, study)
                row = (
                    tuple(search_space[name].to_internal_repr(params[name]) for name in names)
                    if search_space.keys() <= params.keys()
                    else None
                )
                if finished:
                    cache[trial.number] = row
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
        return {name: np.asarray(column) for name, column in zip(names, columns, strict=True)}
