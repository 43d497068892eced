"""Fixed-length features of one trained configuration, comparable across experiments with different spaces.

A trial of any experiment becomes the same :data:`FEATURES`: its hyperparameters (log-scale learning rate and
weight decay, one-hot optimizer), a summary of its architecture that does not depend on the space it came from
(depth, widths, kinds and cell operations as fractions, parameter count), the data set's profile
(:func:`kubetune.meta_record.data_profile`), the epochs it trained, the fidelity it reached and the device.
:mod:`kubetune.meta` fits on past trials; the warm-start step scores candidates of a new experiment.
"""

from __future__ import annotations

import math
from typing import Any

from kubetune.architecture import CELL_OPERATIONS, KINDS, NORMS
from kubetune.encoding import complete_block, is_cell
from kubetune.hyperparameters import HYPERPARAMETERS, OPTIMIZERS

__all__ = ["FEATURES", "architecture_summary", "features", "parameter_count"]

_HYPERPARAMETERS = ["log10_lr", "log10_weight_decay", "log2_batch_size", "momentum", "label_smoothing"]
_ARCHITECTURE = [
    "is_cell",
    "depth",
    "log2_width_mean",
    "log2_width_max",
    *[f"kind_{kind}" for kind in KINDS],
    *[f"norm_{norm}" for norm in NORMS],
    "dropout_mean",
    "skip_fraction",
    "kernel_mean",
    *[f"op_{op}" for op in CELL_OPERATIONS],
    "log10_params",
]
_DATA = ["log10_rows", "log10_features", "classes", "class_balance", "input_rank"]
_RUN = ["log2_epochs", "fidelity_reached", "cuda"]
FEATURES = [*_HYPERPARAMETERS, *[f"optimizer_{o}" for o in OPTIMIZERS], *_ARCHITECTURE, *_DATA, *_RUN]


def _log(value: float, base: float, floor: float) -> float:
    return math.log(max(float(value), floor), base)


def architecture_summary(architecture: dict) -> dict[str, float]:
    """Space-independent numbers of a macro or cell architecture (no parameter count: see :func:`features`)."""
    summary = dict.fromkeys(_ARCHITECTURE[:-1], 0.0)
    if is_cell(architecture):
        operations = [op for node in architecture["edges"] for op in node]
        width = float(architecture["width"])
        summary.update(
            is_cell=1.0,
            depth=float(architecture["cells"]) * architecture["nodes"],
            log2_width_mean=math.log2(width),
            log2_width_max=math.log2(width),
        )
        for op in CELL_OPERATIONS:
            summary[f"op_{op}"] = operations.count(op) / max(len(operations), 1)
        return summary
    blocks = [complete_block(block) for block in architecture["blocks"]]
    widths = [math.log2(max(float(block["width"]), 1.0)) for block in blocks] or [0.0]
    count = max(len(blocks), 1)
    summary.update(depth=float(len(blocks)), log2_width_mean=sum(widths) / len(widths), log2_width_max=max(widths))
    for kind in KINDS:
        summary[f"kind_{kind}"] = sum(block["kind"] == kind for block in blocks) / count
    for norm in NORMS:
        summary[f"norm_{norm}"] = sum(block["norm"] == norm for block in blocks) / count
    summary["dropout_mean"] = sum(float(block["dropout"]) for block in blocks) / count
    summary["skip_fraction"] = sum(bool(block["skip"]) for block in blocks) / count
    convs = [float(block["kernelSize"]) for block in blocks if block["kind"] == "conv"]
    summary["kernel_mean"] = sum(convs) / len(convs) if convs else 0.0
    return summary


def parameter_count(architecture: dict, profile: dict) -> int:
    """Trainable parameters of ``architecture`` built for the profiled data (a model built, never trained)."""
    from kubetune import nas

    model = nas.build_model(
        architecture, input_shape=tuple(profile["input_shape"]), num_classes=int(profile["classes"]), seed=0
    )
    return nas.count_parameters(model)


def features(
    hyperparameters: dict[str, Any],
    architecture: dict,
    profile: dict,
    *,
    params: int,
    epochs: int,
    fidelity_reached: float = 1.0,
    device: str = "cpu",
) -> dict[str, float]:
    """The :data:`FEATURES` of one configuration, in that order; ``architecture`` as the trial trained it."""
    chosen = {**HYPERPARAMETERS, **hyperparameters}
    row = {
        "log10_lr": _log(chosen["lr"], 10, 1e-8),
        "log10_weight_decay": _log(chosen["weightDecay"], 10, 1e-8),
        "log2_batch_size": _log(chosen["batchSize"], 2, 1),
        "momentum": float(chosen["momentum"]),
        "label_smoothing": float(chosen["labelSmoothing"]),
        **{f"optimizer_{o}": float(chosen["optimizer"] == o) for o in OPTIMIZERS},
        **architecture_summary(architecture),
        "log10_params": _log(params, 10, 1),
        "log10_rows": _log(profile["rows"], 10, 1),
        "log10_features": _log(profile["features"], 10, 1),
        "classes": float(profile["classes"]),
        "class_balance": float(profile["class_balance"]),
        "input_rank": float(len(profile["input_shape"])),
        "log2_epochs": _log(epochs, 2, 1),
        "fidelity_reached": float(fidelity_reached),
        "cuda": float(device == "cuda"),
    }
    return {name: row[name] for name in FEATURES}
