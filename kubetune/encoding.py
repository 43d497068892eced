"""One canonical encoding of both architecture spaces, for everything that compares architectures.

:func:`encode` gives a string that equal architectures share and different ones never do (a key for
a tabular benchmark, a population, a cache of trained weights); :func:`decode` reads it back.
:func:`vector` gives a fixed-length list of numbers for a space (one-hot per categorical choice, numbers
scaled to [0, 1], macro blocks padded to ``blocks.high``), for strategies and meta-learning that need
coordinates. The strategies, the tabular benchmark, the supernet and meta-learning all use these.

Strings:
    cell: ``cell:n<nodes>:c<cells>:w<width>:r<reductions>:<node 1>|<node 2>|...``, each node its operations
    on inputs 0 to j-1, comma-separated, e.g. ``cell:n2:c3:w16:r1:conv3|skip,zero``.
    macro: ``macro:<block>|<block>...``, each block ``kind-w<width>[-k<kernelSize>]-<activation>-<norm>-
    d<dropout>-skip|noskip`` with every default filled in, e.g. ``macro:conv-w16-k3-relu-none-d0-noskip``.

Example:
    >>> encode({"type": "cell", "nodes": 2, "edges": [["conv3"], ["skip", "zero"]], "cells": 3.0,
    ...         "width": 16, "reductions": 1})
    'cell:n2:c3:w16:r1:conv3|skip,zero'
"""

from __future__ import annotations

from typing import Any

from kubetune.architecture import BLOCK_DEFAULTS
from kubetune.spec import ArchitectureSpace, CellSpace, Range

__all__ = ["complete_block", "decode", "encode", "flatten", "is_cell", "vector"]


def is_cell(architecture: dict) -> bool:
    """A cell architecture says so; a macro one has only ``blocks`` (as trials recorded before cells did)."""
    return architecture.get("type") == "cell"


def complete_block(block: dict) -> dict:
    """A macro block with every default, numbers as the builder reads them (KFP may hand ints over as floats)."""
    block = {**BLOCK_DEFAULTS, **block}
    block["width"] = int(block["width"])
    if block["kind"] == "conv":
        block["kernelSize"] = int(block["kernelSize"])
    else:
        block.pop("kernelSize")
    block["dropout"] = float(block["dropout"])
    return block


def encode(architecture: dict) -> str:
    """The canonical string of a cell or macro architecture (see the module docstring)."""
    if is_cell(architecture):
        nodes = "|".join(",".join(operations) for operations in architecture["edges"])
        numbers = (int(architecture[field]) for field in ("nodes", "cells", "width", "reductions"))
        return "cell:n{}:c{}:w{}:r{}:".format(*numbers) + nodes
    codes = []
    for block in map(complete_block, architecture["blocks"]):
        kernel = [f"k{block['kernelSize']}"] if "kernelSize" in block else []
        parts = [block["kind"], f"w{block['width']}", *kernel, block["activation"], block["norm"]]
        parts += [f"d{block['dropout']:g}", "skip" if block["skip"] else "noskip"]
        codes.append("-".join(parts))
    return "macro:" + "|".join(codes)


def decode(text: str) -> dict:
    """The architecture of an :func:`encode`-d string: ``decode(encode(a))`` builds the same network as ``a``."""
    kind, _, rest = text.partition(":")
    if kind == "cell":
        *numbers, nodes = rest.split(":", 4)
        fields = dict(zip(("nodes", "cells", "width", "reductions"), (int(n[1:]) for n in numbers), strict=True))
        return {"type": "cell", **fields, "edges": [node.split(",") for node in nodes.split("|")]}
    if kind != "macro":
        raise ValueError(f"an architecture code starts with cell: or macro: but got {text!r}")
    blocks = []
    for code in rest.split("|") if rest else []:
        kind_, width, *more = code.split("-")
        kernel = {"kernelSize": int(more.pop(0)[1:])} if kind_ == "conv" else {}
        activation, norm, dropout, skip = more
        blocks.append(
            {"kind": kind_, "width": int(width[1:]), **kernel, "activation": activation, "norm": norm}
            | {"dropout": float(dropout[1:]), "skip": skip == "skip"}
        )
    return {"blocks": blocks}


def _one_hot(value: Any, choices: list, where: str) -> list[float]:
    if value not in choices:
        raise ValueError(f"{where} is {value!r}, not one of the space's choices {choices}")
    return [1.0 if value == choice else 0.0 for choice in choices]


def _scaled(value: float, low: float, high: float) -> float:
    return (float(value) - low) / (high - low) if high > low else 0.0


def vector(architecture: dict, space: ArchitectureSpace | CellSpace) -> list[float]:
    """A fixed-length vector of ``architecture`` in ``space``: the same length for every architecture of it.

    Cell: the scaled cell count, the width one-hot, then each edge's operation one-hot in sampling order.
    Macro: the scaled block count, then ``blocks.high`` slots of (present, kind, width, kernel size (zeros
    for an MLP block), activation, norm, dropout (scaled, or one-hot for choices), skip); absent blocks are zeros.
    """
    if isinstance(space, CellSpace):
        if not is_cell(architecture):
            raise ValueError("a macro architecture has no vector in a cell space")
        numbers = [_scaled(architecture["cells"], space.cells.low, space.cells.high)]
        numbers += _one_hot(architecture["width"], space.width.choices, "width")
        for node, source in space.edges:
            numbers += _one_hot(
                architecture["edges"][node - 1][source], space.operations.choices, f"edges[{node - 1}][{source}]"
            )
        return numbers
    if is_cell(architecture):
        raise ValueError("a cell architecture has no vector in a macro space")
    blocks = [complete_block(block) for block in architecture["blocks"]]
    numbers = [_scaled(len(blocks), space.blocks.low, space.blocks.high)]
    dimensions = space.block.dimensions()
    for index in range(space.blocks.high):
        slot = [1.0]
        for field, dimension in dimensions.items():
            where = f"blocks[{index}].{field}"
            block = blocks[index] if index < len(blocks) else None
            if isinstance(dimension, Range):
                slot.append(_scaled(block[field], dimension.low, dimension.high) if block else 0.0)
            elif block is None or field not in block:  # absent, or an MLP block's kernel size
                slot += [0.0] * len(dimension.choices)
            else:
                slot += _one_hot(block[field], list(dimension.choices), where)
        numbers += slot if index < len(blocks) else [0.0] * len(slot)
    return numbers


def flatten(architecture: dict) -> dict[str, Any]:
    """Flat ``name -> value`` pairs for MLflow params, named as the trial's Optuna parameters, plus ``arch.code``.

    Macro: ``arch.blocks`` and ``arch.b<i>.<field>``; cell: ``arch.nodes``, ``arch.cells``, ``arch.width``,
    ``arch.reductions`` and ``arch.cell.n<j>.in<i>``.
    """
    if is_cell(architecture):
        flat: dict[str, Any] = {
            f"arch.{field}": architecture[field] for field in ("nodes", "cells", "width", "reductions")
        }
        for node, operations in enumerate(architecture["edges"], start=1):
            flat.update({f"arch.cell.n{node}.in{source}": op for source, op in enumerate(operations)})
    else:
        flat = {"arch.blocks": len(architecture["blocks"])}
        for index, block in enumerate(architecture["blocks"]):
            flat.update({f"arch.b{index}.{key}": value for key, value in block.items()})
    return {**flat, "arch.code": encode(architecture)}
