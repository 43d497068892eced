"""What both model builders share: the layer for an input's rank, the head's flattening, and the error
that names a bad architecture field. The builders themselves are :mod:`kubetune.nas` (blocks) and
:mod:`kubetune.cell_model` (cells)."""

from __future__ import annotations

import math

from torch import nn

from kubetune.architecture import MAX_FLAT_FEATURES

__all__ = ["BATCH_NORM", "CONV", "POOL", "ArchitectureError", "flatten", "positive_int"]

# Keyed by the rank of a per-sample shape: (C, L) is 2, (C, H, W) is 3, (F,) is 1.
CONV = {2: nn.Conv1d, 3: nn.Conv2d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}
POOL = {2: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool2d}


class ArchitectureError(ValueError):
    """An architecture that cannot be built; the message names the field (``blocks[i].width``, ``edges``)
    and the value."""


def flatten(shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int]]:
    """Flatten a (C, *spatial) map, average-pooling the spatial axes first if it is too large."""
    channels, spatial = shape[0], shape[1:]
    if channels * math.prod(spatial) <= MAX_FLAT_FEATURES:
        return nn.Flatten(), (channels * math.prod(spatial),)
    scale = (MAX_FLAT_FEATURES / (channels * math.prod(spatial))) ** (1 / len(spatial))
    target = tuple(max(1, int(size * scale)) for size in spatial)
    return nn.Sequential(POOL[len(shape)](target), nn.Flatten()), (channels * math.prod(target),)


def positive_int(name: str, value, *, least: int = 1) -> int:
    """Integers of at least ``least``, also as integral floats (KFP hands collected ints over as floats)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
        or value < least
    ):
        rule = "a positive integer" if least == 1 else f"an integer of at least {least}"
        raise ArchitectureError(f"{name} must be {rule} but got {value!r}")
    return int(value)
