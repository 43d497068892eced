"""The search space: turns the spec's parameters and architecture space into Optuna suggestions.

Macro architecture dimensions are named ``arch.blocks`` and ``arch.b<i>.<field>``; a block's
``kernelSize`` is suggested only when the block is a conv block, so TPE sees it as conditional.
A cell space has ``arch.cells``, ``arch.width`` and one categorical ``arch.cell.n<j>.in<i>`` per edge
(node j's operation on input i, 0 being the cell's input), none conditional, so every sampler works on it.
A dimension with one value is a constant, not an Optuna parameter.
"""

from __future__ import annotations

from typing import Any

import optuna

from kubetune.hyperparameters import HYPERPARAMETERS
from kubetune.spec import (
    ArchitectureSpace,
    CategoricalParam,
    CellSpace,
    Choice,
    ExperimentSpec,
    IntParam,
    Range,
    sampling_order,
)

__all__ = ["cell_params", "sample", "trainer_hyperparameters"]


def _enabled(param: Any, chosen: dict[str, Any]) -> bool:
    return all(chosen.get(parent) in values for parent, values in (param.when or {}).items())


def _suggest_param(trial: optuna.Trial, name: str, param: Any) -> Any:
    if isinstance(param, CategoricalParam):
        return trial.suggest_categorical(name, param.choices)
    if isinstance(param, IntParam):
        return trial.suggest_int(name, param.low, param.high, step=param.step or 1, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def _suggest_dimension(trial: optuna.Trial, name: str, dimension: Choice | Range) -> Any:
    if isinstance(dimension, Range):
        return trial.suggest_float(name, dimension.low, dimension.high, step=dimension.step)
    if len(dimension.choices) == 1:
        return dimension.choices[0]
    return trial.suggest_categorical(name, dimension.choices)


def _suggest_count(trial: optuna.Trial, name: str, low: int, high: int) -> int:
    return low if low == high else trial.suggest_int(name, low, high)


def _sample_cell(trial: optuna.Trial, space: CellSpace) -> dict:
    """``{"type": "cell", "nodes", "edges", "cells", "width", "reductions"}``; ``edges[j - 1][i]`` is node j's
    operation on input i."""
    edges: list[list[str]] = [[] for _ in range(space.nodes)]
    for node, source in space.edges:
        edges[node - 1].append(_suggest_dimension(trial, f"arch.cell.n{node}.in{source}", space.operations))
    return {
        "type": "cell",
        "nodes": space.nodes,
        "edges": edges,
        "cells": _suggest_count(trial, "arch.cells", space.cells.low, space.cells.high),
        "width": _suggest_dimension(trial, "arch.width", space.width),
        "reductions": space.reductions,
    }


def cell_params(architecture: dict, space: CellSpace) -> dict[str, Any]:
    """The Optuna parameters that make :func:`sample` pick the cell ``architecture`` of ``space`` (to enqueue
    it): its dimensions of more than one value, named as :func:`_sample_cell` names them."""
    params: dict[str, Any] = {}
    if len(space.operations.choices) > 1:
        for node, source in space.edges:
            params[f"arch.cell.n{node}.in{source}"] = architecture["edges"][node - 1][source]
    if space.cells.low != space.cells.high:
        params["arch.cells"] = int(architecture["cells"])
    if len(space.width.choices) > 1:  # the choice as the spec writes it, which the distribution holds
        params["arch.width"] = next(c for c in space.width.choices if int(c) == int(architecture["width"]))
    return params


def _sample_architecture(trial: optuna.Trial, space: ArchitectureSpace | CellSpace) -> dict:
    if isinstance(space, CellSpace):
        return _sample_cell(trial, space)
    count = _suggest_count(trial, "arch.blocks", space.blocks.low, space.blocks.high)
    dimensions = space.block.dimensions()
    blocks = []
    for index in range(count):
        block: dict[str, Any] = {}
        for field, dimension in dimensions.items():
            if field == "kernelSize" and block["kind"] != "conv":
                continue
            block[field] = _suggest_dimension(trial, f"arch.b{index}.{field}", dimension)
        blocks.append(block)
    return {"blocks": blocks}


def sample(trial: optuna.Trial, spec: ExperimentSpec) -> tuple[dict, dict | None]:
    """Suggest every hyperparameter and, if the spec has one, an architecture.

    Returns ``(hyperparameters, architecture)``; ``architecture`` is None without an architecture space.
    """
    chosen: dict[str, Any] = {}
    for name in sampling_order(spec.parameters):
        param = spec.parameters[name]
        if _enabled(param, chosen):
            chosen[name] = _suggest_param(trial, name, param)
    architecture = _sample_architecture(trial, spec.architecture) if spec.architecture else None
    return chosen, architecture


def trainer_hyperparameters(spec: ExperimentSpec, chosen: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the spec's fixed trial settings, then the sampled values."""
    return {**HYPERPARAMETERS, "batchSize": spec.trial.batch_size, **chosen}
