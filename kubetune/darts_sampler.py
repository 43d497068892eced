"""sampler darts: every trial trains a cell that a DARTS search (:mod:`kubetune.darts`) derived.

The searches run once per study, in the search-supernet step before the lanes (:mod:`kubetune.supernet_step`),
which records the derived cells in the study attribute ``supernet``. Trial n trains cell n modulo their
number, so once each has trained, later trials train them again with new seeds, measuring how much a derived
cell's accuracy owes to its initialisation. Hyperparameters the spec searches are drawn at random: DARTS
searches the cell only. This module imports no torch, since every suggest step builds the sampler.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from kubetune.sampler_state import IndependentSampler

__all__ = ["SUPERNET_ATTR", "DartsSampler"]

SUPERNET_ATTR = "supernet"  # the study attribute where the search-supernet step records what it did


class DartsSampler(IndependentSampler):
    """The architecture parameters of a derived cell; hyperparameters drawn uniformly."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._cells: dict[int, dict] = {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        params = self._cell(study, trial.number)["params"]
        if param_name in params:
            return params[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def trial_attrs(self, trial_number: int) -> dict:
        """``suggested_by`` (the search, its frame, seed and the cell's code) once this sampler sampled the trial."""
        cell = self._cells.get(trial_number)
        if cell is None:
            return {}
        return {"suggested_by": {"strategy": "darts", **{k: cell[k] for k in ("search", "frame", "seed", "code")}}}

    def _cell(self, study: optuna.Study, number: int) -> dict:
        if number not in self._cells:
            cells = (study.user_attrs.get(SUPERNET_ATTR) or {}).get("cells")
            if not cells:
                raise RuntimeError(
                    "sampler darts found no derived cells in the study: the search-supernet step, which runs before "
                    f"the lanes, records them in the study attribute {SUPERNET_ATTR!r}; see that step's log"
                )
            self._cells[number] = cells[number % len(cells)]
        return self._cells[number]
