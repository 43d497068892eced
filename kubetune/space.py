"""The search space: turns the spec's parameters and architecture space into Optuna suggestions.

Architecture dimensions are named ``arch.blocks`` and ``arch.b<i>.<field>``; a block's
``kernelSize`` is suggested only when the block is a conv block, so TPE sees it as conditional.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna

from kubetune.hyperparameters import HYPERPARAMETERS
from kubetune.spec import (
    ArchitectureSpace,
    CategoricalParam,
    Choice,
    ExperimentSpec,
    IntParam,
    Range,
    sampling_order,
)

__all__ = ["grid_points", "grid_space", "sample", "trainer_hyperparameters"]

BLOCK_FIELDS = ("kind", "width", "kernelSize", "activation", "norm", "dropout", "skip")


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


def _block_dimensions(space: ArchitectureSpace) -> dict[str, Choice | Range]:
    block = space.block
    return {
        "kind": block.kind,
        "width": block.width,
        "kernelSize": block.kernel_size,
        "activation": block.activation,
        "norm": block.norm,
        "dropout": block.dropout,
        "skip": block.skip,
    }


def _sample_architecture(trial: optuna.Trial, space: ArchitectureSpace) -> dict:
    if space.blocks.low == space.blocks.high:
        count = space.blocks.low
    else:
        count = trial.suggest_int("arch.blocks", space.blocks.low, space.blocks.high)
    dimensions = _block_dimensions(space)
    blocks = []
    for index in range(count):
        block = {}
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


def _steps(low: float, high: float, step: float) -> list[float]:
    """low, low + step, ... up to high, without float drift (0.1 * 3 is 0.30000000000000004, past high 0.3)."""
    count = int(np.floor((high - low) / step + 1e-9)) + 1
    return [min(float(f"{low + i * step:.12g}"), high) for i in range(count)]


def _values(dimension: Any) -> list:
    if isinstance(dimension, (CategoricalParam, Choice)):
        return list(dimension.choices)
    step = dimension.step or 1
    if isinstance(dimension, IntParam):
        return list(range(dimension.low, dimension.high + 1, step))
    return _steps(dimension.low, dimension.high, step)


def grid_space(spec: ExperimentSpec) -> dict[str, list]:
    """The values each dimension can take: every parameter by name, ``arch.blocks`` and each block field
    once, as ``arch.block.<field>``. Not the grid's points: those depend on the values chosen (see grid_points)."""
    grid = {name: _values(param) for name, param in spec.parameters.items()}
    space = spec.architecture
    if space is not None:
        grid["arch.blocks"] = list(range(space.blocks.low, space.blocks.high + 1))
        grid.update(
            {f"arch.block.{field}": _values(dimension) for field, dimension in _block_dimensions(space).items()}
        )
    return grid


def _parameter_points(spec: ExperimentSpec, values: dict[str, list]) -> int:
    """Distinct hyperparameter settings: a parameter counts only where its ``when`` holds."""
    order = sampling_order(spec.parameters)
    parents = {parent for param in spec.parameters.values() for parent in (param.when or {})}

    def count(index: int, chosen: dict[str, Any]) -> int:
        if index == len(order):
            return 1
        name = order[index]
        if not _enabled(spec.parameters[name], chosen):
            return count(index + 1, chosen)
        if name not in parents:
            return len(values[name]) * count(index + 1, chosen)
        return sum(count(index + 1, {**chosen, name: value}) for value in values[name])

    return count(0, {})


def _architecture_points(values: dict[str, list]) -> int:
    """Distinct architectures: a kernel size counts for conv blocks only, and each block count on its own."""
    sizes = {field: len(values[f"arch.block.{field}"]) for field in BLOCK_FIELDS if field not in ("kind", "kernelSize")}
    per_block = sum(
        math.prod(sizes.values()) * (len(values["arch.block.kernelSize"]) if kind == "conv" else 1)
        for kind in values["arch.block.kind"]
    )
    return sum(per_block**blocks for blocks in values["arch.blocks"])


def grid_points(spec: ExperimentSpec) -> int:
    """How many distinct configurations a grid search over ``spec`` tries (the spec guarantees it is finite)."""
    values = grid_space(spec)
    architectures = _architecture_points(values) if spec.architecture else 1
    return _parameter_points(spec, values) * architectures
