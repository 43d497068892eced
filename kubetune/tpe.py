"""Optuna's TPE sampler with the work its parameter groups share done once per ask.

With ``group=True`` TPE samples each group of parameters that appear together on its own (here: the
hyperparameters, each architecture block, each conditional kernel size); with constant liar it reads
every trial from the database again for each group, and it recomputes each finished trial's
observations for every ask. This subclass changes only where the trials come from and what is
remembered, never how TPE samples: it suggests what TPESampler suggests (checked against Optuna's in
tests/services/test_concurrency.py and benchmarks/study_throughput.py; the gain is in
benchmarks/README.md).

With ``history`` set it also bounds what each ask models (:func:`window`), so TPE's own work per ask
grows far less with the study; benchmarks/tpe_history.py measures the time saved and the search quality
it costs. A sampler that asks many times (the storage proxy's suggest service keeps one per study)
remembers what it saw of the finished trials, so its asks scan only what changed (:class:`_Unseen`);
Optuna's own reads still list every trial.

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

    ``trials`` are every trial of the study in number order, as Optuna's storages return them. Running
    trials stay because constant liar needs them. The good set TPE takes from the window is the whole
    study's best min(ceil(0.1 n), 25) for the window's n finished trials, so from ``history`` 241 on it is
    exactly the unbounded good set and only the "bad" density sees recent trials alone; Optuna's TPE
    already weighs older bad trials less. A sampler asking again keeps a :class:`_Window` instead.
    """
    return _Window(history).of(trials, direction)


class _Unseen:
    """Each finished trial of a study once, for a sampler that asks many times (finished trials never change).

    Only the trials past the study's longest all-finished run from trial 0 are scanned again, so once a
    long-lived process has seen the history, an ask no longer walks it. ``trials`` must be every trial of
    the study in number order (so ``trials[i].number == i``).
    """

    def __init__(self) -> None:
        self._prefix = 0  # trials[:prefix] are all finished and were all returned
        self._taken: set[int] = set()  # finished trials past the prefix already returned

    def scan(self, trials: list[FrozenTrial]) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        """The finished trials not returned before, and the unfinished ones (past the prefix, so all of them)."""
        new, unfinished = [], []
        for trial in itertools.islice(trials, self._prefix, None):
            if not trial.state.is_finished():
                unfinished.append(trial)
            elif trial.number not in self._taken:
                new.append(trial)
                self._taken.add(trial.number)
        while self._prefix < len(trials) and trials[self._prefix].state.is_finished():
            self._taken.discard(self._prefix)
            self._prefix += 1
        return new, unfinished


class _Window:
    """:func:`window` for one study, remembering its best trials between asks so that an ask scans only
    the trials that changed (see :class:`_Unseen`)."""

    def __init__(self, history: int) -> None:
        self._history = history
        self._unseen = _Unseen()
        self._best: list[FrozenTrial] = []

    def of(self, trials: list[FrozenTrial], direction: StudyDirection) -> list[FrozenTrial]:
        new, unfinished = self._unseen.scan(trials)
        pick = heapq.nlargest if direction == StudyDirection.MAXIMIZE else heapq.nsmallest
        complete = [t for t in new if t.state == TrialState.COMPLETE]
        self._best = pick(GOOD_SET, self._best + complete, key=lambda t: cast(float, t.value))
        running = [t for t in unfinished if t.state == TrialState.RUNNING]
        recent = itertools.islice((t for t in reversed(trials) if t.state in _MODELLED), self._history)
        kept = {t.number: t for t in itertools.chain(running, recent, self._best)}
        return [kept[number] for number in sorted(kept)]


class _GroupsSeenOnce(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition, adding each finished trial once instead of all trials every time.

    Optuna internal: TPESampler's ``_group_decomposed_search_space``. A finished trial never changes
    and adding the same parameter set again leaves the groups as they are, so the groups are exactly
    Optuna's; the cost per trial no longer grows with the study.
    """

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._unseen = _Unseen()
        self._lock = threading.Lock()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = (TrialState.COMPLETE, TrialState.PRUNED) if self._include_pruned else (TrialState.COMPLETE,)
        with self._lock:
            new, _ = self._unseen.scan(study._get_trials(deepcopy=False, use_cache=use_cache))
            for trial in new:
                if trial.state in states:
                    self._search_space.add_distributions(trial.distributions)
            return copy.deepcopy(self._search_space)


class _OneReadPerAsk:
    """The study as one ask sees it: each read of its trials is served from Optuna's per-ask cache.

    Optuna internal: the cache (``Study._get_trials(use_cache=True)``) is filled after the asked trial
    was created, so it holds every trial running then, which constant liar needs; a lane that starts
    within the same milliseconds is seen by the next ask instead of by a later group of this one.
    With ``history`` every read is of the :func:`window`, taken once per ask.
    """

    def __init__(self, study: optuna.Study, window: _Window | None) -> None:
        self._study = study
        self._keeper = window
        self._window: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        if self._keeper is None:
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=True)
        if self._window is None:
            every = self._study._get_trials(deepcopy=False, use_cache=True)
            self._window = self._keeper.of(every, self._study.direction)
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
        self.history = history
        self._window = None if history is None else _Window(history)
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = _GroupsSeenOnce(True)
        self._rows: dict[tuple, dict[int, tuple | None]] = {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(cast(optuna.Study, _OneReadPerAsk(study, self._window)), trial, search_space)

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
