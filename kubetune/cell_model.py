"""Build a cell architecture (plain JSON) as a ``torch.nn.Module``.

A cell architecture is ``{"type": "cell", "nodes": n, "edges": [[op], [op, op], ...], "cells", "width",
"reductions"}``: ``edges[j - 1][i]`` is the operation node j applies to input i (0 the cell's input, i the
node i), and node j is the sum of its operations. The cell's output is the mean of its n nodes, so a cell
keeps its width whatever n is (DARTS concatenates them and multiplies the width by n instead). A ``zero``
edge contributes nothing; a node whose edges are all ``zero`` is zeros.

The network is a stem (a 3-wide convolution, or a linear layer on flat inputs, to ``width``), ``cells``
copies of the cell, and the macro builder's head (flatten, pooled if too large, then linear). Before each
of the ``reductions`` cells that :func:`kubetune.architecture.reduction_cells` picks, a strided 1-wide
convolution halves the spatial size and doubles the width. Flat (F,) inputs have no spatial size: they
skip the reductions and read each operation as :data:`kubetune.architecture.FLAT_OPERATIONS` says.

Example:
    >>> architecture = {"type": "cell", "nodes": 2, "edges": [["conv3"], ["skip", "avgpool"]],
    ...                 "cells": 2, "width": 8, "reductions": 1}
    >>> build(validate(architecture), input_shape=(1, 40), num_classes=10)(torch.zeros(2, 1, 40)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kubetune.architecture import CELL_OPERATIONS, FLAT_OPERATIONS, MAX_CELL_NODES, reduction_cells
from kubetune.layers import BATCH_NORM, CONV, ArchitectureError, flatten, positive_int

__all__ = ["FIELDS", "build", "make_operation", "resolved", "stack", "validate"]

FIELDS = ("type", "nodes", "edges", "cells", "width", "reductions")
AVERAGE_POOL = {2: nn.AvgPool1d, 3: nn.AvgPool2d}


def validate(architecture: dict) -> dict:
    """The architecture with integral fields as ints; raises ArchitectureError naming the field."""
    unknown = sorted(set(architecture) - set(FIELDS))
    if unknown:
        raise ArchitectureError(f"cell architecture has unknown fields {unknown}; the fields are {list(FIELDS)}")
    missing = [field for field in FIELDS if field not in architecture]
    if missing:
        raise ArchitectureError(f"cell architecture needs the fields {missing}")
    nodes = positive_int("nodes", architecture["nodes"])
    if nodes > MAX_CELL_NODES:
        raise ArchitectureError(f"nodes must be at most {MAX_CELL_NODES} but got {nodes}")
    edges = architecture["edges"]
    shape = [len(e) if isinstance(e, list) else None for e in edges] if isinstance(edges, list) else None
    if shape != list(range(1, nodes + 1)):
        raise ArchitectureError(
            f"edges must be {nodes} lists, the j-th holding j operations (one per earlier state) but got {edges!r}"
        )
    for node, operations in enumerate(edges, start=1):
        for source, operation in enumerate(operations):
            if operation not in CELL_OPERATIONS:
                raise ArchitectureError(
                    f"edges[{node - 1}][{source}] must be one of {list(CELL_OPERATIONS)} but got {operation!r}"
                )
    cells = positive_int("cells", architecture["cells"])
    reductions = positive_int("reductions", architecture["reductions"], least=0)
    if reductions > cells:
        raise ArchitectureError(f"reductions must be at most cells ({cells}) but got {reductions}")
    width = positive_int("width", architecture["width"])
    return {"type": "cell", "nodes": nodes, "edges": edges, "cells": cells, "width": width, "reductions": reductions}


def build(architecture: dict, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The network of a :func:`validate`-d architecture; the caller seeds the initialisation."""
    edges = architecture["edges"]
    return stack(
        architecture,
        input_shape=input_shape,
        num_classes=num_classes,
        cell=lambda width, rank: Cell(edges, width, rank),
    )


def stack(
    architecture: dict, *, input_shape: tuple[int, ...], num_classes: int, cell: Callable[[int, int], nn.Module]
) -> nn.Sequential:
    """Stem, ``architecture["cells"]`` cells from ``cell(width, rank)`` with the reductions between them, and head.

    Only ``cells``, ``width`` and ``reductions`` are read: the weight-sharing supernet stacks its mixed cells
    in the same frame, so its subnetworks are the networks :func:`build` makes.
    """
    rank, width = len(input_shape), architecture["width"]
    layers: list[nn.Module] = [_stem(input_shape, width)]
    shape = (width, *input_shape[1:])
    reducing = set(reduction_cells(architecture["cells"], architecture["reductions"])) if rank > 1 else set()
    for index in range(architecture["cells"]):
        if index in reducing:
            layers.append(_reduction(shape))
            shape = (2 * shape[0], *((size + 1) // 2 for size in shape[1:]))
        layers.append(cell(shape[0], rank))
    if rank > 1:
        flat, shape = flatten(shape)
        layers.append(flat)
    layers.append(nn.Linear(shape[0], num_classes))
    return nn.Sequential(*layers)


class Cell(nn.Module):
    """Node j = the sum of its non-zero edges' operations on the earlier states; the output is the nodes' mean.

    Each operation is named after its edge (``n<j>_in<i>``), never by its position among the non-zero
    ones, so a tensor keeps its name in every architecture that has its edge (weight inheritance copies by name).
    """

    def __init__(self, edges: list[list[str]], width: int, rank: int):
        super().__init__()
        self.operations = nn.ModuleDict()
        self.inputs: list[list[tuple[int, str]]] = []  # per node: (source state, name in operations)
        for node, operations in enumerate(edges, start=1):
            inputs = []
            for source, operation in enumerate(operations):
                if resolved(operation, rank) != "zero":
                    name = f"n{node}_in{source}"
                    inputs.append((source, name))
                    self.operations[name] = make_operation(operation, width, rank)
            self.inputs.append(inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for inputs in self.inputs:
            terms = [self.operations[name](states[source]) for source, name in inputs]
            states.append(torch.stack(terms).sum(0) if terms else torch.zeros_like(x))
        return torch.stack(states[1:]).mean(0)


def resolved(operation: str, rank: int) -> str:
    """The operation ``operation`` names on a state of ``rank`` (flat states read it as FLAT_OPERATIONS says)."""
    return FLAT_OPERATIONS[operation] if rank == 1 else operation


def make_operation(operation: str, width: int, rank: int) -> nn.Module:
    """One edge's module for a state of ``width`` channels (features when ``rank`` is 1); not for ``zero``."""
    operation = resolved(operation, rank)
    if operation == "skip":
        return nn.Identity()
    if operation == "avgpool":
        return AVERAGE_POOL[rank](3, stride=1, padding=1, count_include_pad=False)
    if rank == 1:  # linear
        layer: nn.Module = nn.Linear(width, width, bias=False)
    else:
        layer = CONV[rank](width, width, 3 if operation == "conv3" else 1, padding="same", bias=False)
    return nn.Sequential(nn.ReLU(), layer, BATCH_NORM[rank](width))


def _stem(input_shape: tuple[int, ...], width: int) -> nn.Module:
    if len(input_shape) == 1:
        return nn.Sequential(nn.Linear(input_shape[0], width, bias=False), nn.BatchNorm1d(width))
    rank = len(input_shape)
    return nn.Sequential(CONV[rank](input_shape[0], width, 3, padding="same", bias=False), BATCH_NORM[rank](width))


def _reduction(shape: tuple[int, ...]) -> nn.Module:
    """Half the spatial size (rounded up), twice the channels."""
    rank, channels = len(shape), shape[0]
    return nn.Sequential(
        nn.ReLU(), CONV[rank](channels, 2 * channels, 1, stride=2, bias=False), BATCH_NORM[rank](2 * channels)
    )
