"""Weight inheritance: a mutated child network starts from its parent's trained tensors.

Tensors are matched by name (``nas.build_model`` names layers by block position, so a mutation
leaves the other blocks' names alone). A tensor of the same shape is copied. A tensor that grew
(a widened layer: more output units, or more inputs because the layer before it widened) gets the
parent's values in its leading slice and keeps its fresh initialisation elsewhere. This is Net2Net's
widening (Chen et al. 2016) without its function-preserving step: Net2Net copies existing units into
the new ones and rescales their outgoing weights so the child computes exactly the parent's function;
here the new units start random, which keeps the copy shape-only and lets them learn something new,
at the price of a child that does not start at its parent's accuracy. Every other tensor (a new
layer of a deeper child, a shrunk or reshaped one) keeps its initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["CopySummary", "inherit_weights"]


@dataclass(frozen=True)
class CopySummary:
    """How many of the child's tensors were copied whole, copied into a slice, or left as initialised."""

    copied: int
    sliced: int
    skipped: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def inherit_weights(parent_state: Mapping[str, torch.Tensor], child: nn.Module) -> CopySummary:
    """Copy ``parent_state`` (a state dict) into ``child`` in place, tensor by tensor; see the module docstring."""
    copied = sliced = skipped = 0
    with torch.no_grad():
        for name, target in child.state_dict().items():  # these tensors share storage with the child's
            source = parent_state.get(name)
            if source is None or source.dim() != target.dim():
                skipped += 1
            elif source.shape == target.shape:
                target.copy_(source)
                copied += 1
            elif all(have <= want for have, want in zip(source.shape, target.shape, strict=True)):
                target[tuple(slice(0, size) for size in source.shape)].copy_(source)
                sliced += 1
            else:
                skipped += 1
    return CopySummary(copied=copied, sliced=sliced, skipped=skipped)
