"""Cheaper fidelities than training on all the data at full width: the ladder a trial climbs, and what a level changes.

With ``trial.fidelity`` ``dataFraction`` or ``width`` a trial trains once per level of a ladder, from a fresh
network each time, for ``trial.epochs`` epochs: on that fraction of the training rows, or with every width
scaled by it. The levels are 1, 1/eta, 1/eta**2, ... (eta the pruner's ``reductionFactor``) down to the
smallest that is at least ``minFraction``; level k of K + 1 is reported at step eta**k, so a step is the
fidelity in units of the smallest level (fraction = step / eta**K), and ASHA's and Hyperband's rungs
(``minResource`` 1 times eta**k) fall exactly on the levels.

Plain Python (NumPy only inside :func:`subset_rows`), so the spec can validate a ladder without importing it.

Example:
    >>> [(level.step, round(level.fraction, 3)) for level in ladder(0.1, 3)]
    [(1, 0.111), (3, 0.333), (9, 1.0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_MIN_FRACTION",
    "FIDELITIES",
    "MAX_LEVELS",
    "Level",
    "ladder",
    "scale_width",
    "scaled",
    "subset_rows",
]

# trial.fidelity.kind: what a lower level saves on. ``epochs`` is the plain epoch-by-epoch report of old.
FIDELITIES = ("epochs", "dataFraction", "width")
DEFAULT_MIN_FRACTION = 0.1
MAX_LEVELS = 10  # trainings of one trial; the ladder's cost is bounded anyway (under eta / (eta - 1) full trainings)
_TOLERANCE = 1e-9  # a minFraction written as 0.1111 still admits the level 1/9


@dataclass(frozen=True)
class Level:
    """One rung: the ``step`` its value is reported at, and the ``fraction`` of the data or width it trains with."""

    step: int
    fraction: float


def ladder(min_fraction: float, reduction_factor: int) -> list[Level]:
    """The levels from the smallest at least ``min_fraction`` up to 1, each ``reduction_factor`` times the one before."""
    top = 0
    while reduction_factor ** (top + 1) * min_fraction <= 1 + _TOLERANCE:
        top += 1
    return [Level(step=reduction_factor**k, fraction=float(reduction_factor ** (k - top))) for k in range(top + 1)]


def scaled(width: int, multiplier: float) -> int:
    """``width`` times ``multiplier``, rounded to the nearest integer (halves up); the spec keeps it at least 1."""
    return math.floor(width * multiplier + 0.5)


def scale_width(architecture: dict, multiplier: float) -> dict:
    """A copy of a macro (every block's ``width``) or cell (its first ``width``) architecture, scaled.

    A cell's reductions double the scaled width, so every layer of either kind shrinks by the same factor.
    """
    if architecture.get("type") == "cell":
        return {**architecture, "width": scaled(architecture["width"], multiplier)}
    blocks = [{**block, "width": scaled(block["width"], multiplier)} for block in architecture["blocks"]]
    return {**architecture, "blocks": blocks}


def subset_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of the rows (at least 2, for batch norm), the same for the same seed.

    Stratified and nested: the rows are shuffled by ``seed``, each class's rows ranked by their position among
    that class, and a prefix of that ranking taken, so every class keeps its share and a larger fraction
    holds every row of a smaller one.
    """
    import numpy as np  # only here: the spec imports this module and must stay free of NumPy

    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    rank = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(shuffled == label)
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    ranked = order[np.argsort(rank, kind="stable")]
    count = min(len(labels), max(2, math.ceil(fraction * len(labels) - _TOLERANCE)))
    return np.sort(ranked[:count])
