"""Optuna's TPE sampler with the work its parameter groups share done once per ask.

With ``group=True`` TPE samples each group of parameters that appear together on its own (here: the
hyperparameters, each architecture block, each conditional kernel size); with constant liar it reads
every trial from the database again for each group, and it recomputes each finished trial's
observations for every ask. This subclass changes only where the trials come from and what is
remembered, never how TPE samples: it suggests what TPESampler suggests (checked against Optuna's in
tests/services/test_concurrency.py and benchmarks/study_throughput.py; the gain is in
benchmarks/README.md).

With ``history`` set it also bounds what each ask models (:func:`window`), so TPE's own work per ask
stops growing with the study; benchmarks/tpe_history.py measures the time saved (each ask still passes
over every trial once) and the search quality it costs.

Optuna has no public hook for either, so the private parts touched (marked ``Optuna internal``) are
all here, and the Optuna minor version is pinned in pyproject.toml.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["GOOD_SET", "TPESampler", "window"]

_UNSEEN = object()
# Optuna's TPE never puts more complete trials than this in its "good" set: gamma(n) = min(ceil(0.1 n), 25).
GOOD_SET = 25
_MODELLED = (TrialState.COMPLETE, TrialState.PRUNED)  # the finished trials TPE builds its densities from


def window(trials: list[FrozenTrial], history: int, direction: StudyDirection) -> list[FrozenTrial]:
    """What TPE models with ``history``: every running trial, the last ``history`` complete or pruned ones
    and the study's best :data:`GOOD_SET` complete ones, in number order.

    ``trials`` are in number order, as Optuna's storages return them (sorted by trial id). Running trials
    stay because constant liar needs them. The good set TPE takes from the window is the whole study's best
    min(ceil(0.1 n), 25) for the window's n finished trials, so from ``history`` 241 on it is exactly the
    unbounded good set and only the "bad" density sees recent trials alone; Optuna's TPE already weighs
    older bad trials less. It runs over the whole study on every ask, so it reads each trial's state once
    and sorts only what it keeps.
    """
    running, complete = [], []
    for trial in trials:
        state = trial.state
        if state == TrialState.COMPLETE:
            complete.append(trial)
        elif state == TrialState.RUNNING:
            running.append(trial)
    recent = list(itertools.islice((t for t in reversed(trials) if t.state in _MODELLED), history))
    pick = heapq.nlargest if direction == StudyDirection.MAXIMIZE else heapq.nsmallest
    best = pick(GOOD_SET, complete, key=lambda t: cast(float, t.value))
    kept = {t.number: t for t in itertools.chain(running, recent, best)}
    return [kept[number] for number in sorted(kept)]


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
    With ``history`` every read is of the :func:`window`, taken once per ask.
    """

    def __init__(self, study: optuna.Study, history: int | None) -> None:
        self._study = study
        self._history = history
        self._window: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        if self._history is None:
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=True)
        if self._window is None:
            every = self._study._get_trials(deepcopy=False, use_cache=True)
            self._window = window(every, self._history, self._study.direction)
        trials = [t for t in self._window if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


class TPESampler(optuna.samplers.TPESampler):
    """TPESampler reading the trials once per ask, with an incremental group decomposition and cached observations.

    ``history`` (None: every trial) bounds what an ask models to the :func:`window`. TPE samples at random
    while the study has fewer than ``n_startup_trials`` complete or pruned trials; the window keeps at least
    min(history, that count) of them, so with ``history >= n_startup_trials`` it never sends a large study
    back to random sampling.
    """

    def __init__(self, *, history: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if history is not None and history < self._n_startup_trials:
            raise ValueError(f"history ({history}) must be at least n_startup_trials ({self._n_startup_trials})")
        self._history = history
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _GroupsSeenOnce(True)
        self._rows: dict[tuple, dict[int, tuple | None]] = {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(cast(optuna.Study, _OneReadPerAsk(study, self._history)), trial, search_space)

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
