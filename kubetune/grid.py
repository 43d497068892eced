"""Counting a grid search's distinct configurations from the values each dimension takes.

Plain values in, a number out: the spec bounds a grid's size with it, and neither needs the search
space that turns a spec into Optuna suggestions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.architecture import BLOCK_FIELDS

__all__ = ["architecture_points", "cell_points", "parameter_points", "steps"]


def steps(low: float, high: float, step: float) -> list[float]:
    """low, low + step, ... up to high, without float drift (0.1 * 3 is 0.30000000000000004, past high 0.3)."""
    count = math.floor((high - low) / step + 1e-9) + 1
    return [min(float(f"{low + i * step:.12g}"), high) for i in range(count)]


def parameter_points(
    values: Mapping[str, Sequence[Any]], conditions: Mapping[str, Mapping[str, Sequence[Any]]], order: Sequence[str]
) -> int:
    """Distinct hyperparameter settings: a parameter counts only where its ``when`` conditions hold.

    ``order`` lists every parameter after the parents its conditions name (``spec.sampling_order``).
    """
    parents = {parent for when in conditions.values() for parent in when}

    def count(index: int, chosen: dict[str, Any]) -> int:
        if index == len(order):
            return 1
        name = order[index]
        if not all(chosen.get(parent) in allowed for parent, allowed in conditions.get(name, {}).items()):
            return count(index + 1, chosen)
        if name not in parents:
            return len(values[name]) * count(index + 1, chosen)
        return sum(count(index + 1, {**chosen, name: value}) for value in values[name])

    return count(0, {})


def architecture_points(block_counts: Sequence[int], block_values: Mapping[str, Sequence[Any]]) -> int:
    """Distinct architectures: a kernel size counts for conv blocks only, and each block count on its own.

    ``block_values`` holds the values of each block field (``kind``, ``width``, ``kernelSize``, ...).
    """
    others = math.prod(len(block_values[field]) for field in BLOCK_FIELDS if field not in ("kind", "kernelSize"))
    per_block = sum(
        others * (len(block_values["kernelSize"]) if kind == "conv" else 1) for kind in block_values["kind"]
    )
    return sum(per_block**blocks for blocks in block_counts)


def cell_points(cell_counts: int, widths: int, operations: int, edges: int) -> int:
    """Distinct cell architectures: every edge picks an operation on its own; the count of stacked cells
    and the width multiply them (``reductions`` is fixed by the space)."""
    return cell_counts * widths * operations**edges
