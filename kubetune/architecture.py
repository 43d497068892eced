"""The architecture vocabulary: what a block or a cell may be, shared by the spec (what a user may choose)
and the model builders (what they build), so that the two cannot drift apart.

Plain data without torch, so the spec can validate an architecture space without importing it.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURE_TYPES",
    "BLOCK_DEFAULTS",
    "BLOCK_FIELDS",
    "CELL_DEFAULT_OPERATIONS",
    "CELL_OPERATIONS",
    "DEFAULT_WIDTHS",
    "FLAT_OPERATIONS",
    "KINDS",
    "MAX_CELL_NODES",
    "MAX_FLAT_FEATURES",
    "NORMS",
    "cell_edges",
    "reduction_cells",
]

# spec.architecture.type: a stack of blocks (macro) or a stacked DAG cell (cell).
ARCHITECTURE_TYPES = ("macro", "cell")

KINDS = ("conv", "mlp")
# Activation name -> the torch.nn class the model builder uses for it.
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}
NORMS = ("none", "batch", "layer")
# What a block field takes when it is not given; ``kind`` and ``width`` have no default.
BLOCK_DEFAULTS: dict[str, str | int | float | bool] = {
    "kernelSize": 3,
    "activation": "relu",
    "norm": "none",
    "dropout": 0.0,
    "skip": False,
}
# The widths of the network a trial trains when the experiment has no architecture space, by block kind.
DEFAULT_WIDTHS = {"conv": 32, "mlp": 128}
# A block's fields, in the order a trial suggests them (``kernelSize`` after ``kind``: conv blocks only).
BLOCK_FIELDS = ("kind", "width", *BLOCK_DEFAULTS)
# A flattened feature map larger than this is average-pooled first, so the next linear layer stays small.
MAX_FLAT_FEATURES = 4096

# A cell edge's operations. On (C, H, W) and (C, L) inputs: a 3- or 1-wide convolution (ReLU, conv,
# batch norm), a 3-wide average pool, the identity, or nothing; ``linear`` is the 1-wide convolution
# (a per-position linear layer). Flat (F,) inputs have no positions, so there every name means what
# FLAT_OPERATIONS says: the default operations become linear, skip and zero, with no new names to learn.
CELL_OPERATIONS = ("conv3", "conv1", "avgpool", "skip", "zero", "linear")
CELL_DEFAULT_OPERATIONS = ("conv3", "conv1", "avgpool", "skip", "zero")
FLAT_OPERATIONS = {
    "conv3": "linear",
    "conv1": "linear",
    "linear": "linear",
    "avgpool": "skip",
    "skip": "skip",
    "zero": "zero",
}
MAX_CELL_NODES = 8  # intermediate nodes of a cell: 36 edges, each one categorical choice


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """The edges of a cell of ``nodes`` intermediate nodes as ``(node, input)``, in sampling order.

    Node ``j`` (1 to ``nodes``) takes every earlier state: input 0 is the cell's input, input ``i`` node ``i``.
    """
    return [(node, source) for node in range(1, nodes + 1) for source in range(node)]


def reduction_cells(cells: int, reductions: int) -> list[int]:
    """Which of ``cells`` stacked cells (0-based) halve the spatial size and double the width: evenly spaced,
    as the reduction cells at a third and two thirds of DARTS' network, and all of them when ``reductions == cells``."""
    return [k * cells // (reductions + 1) for k in range(1, reductions + 1)]
