"""Turn a sampled architecture (plain JSON) into a ``torch.nn.Module``.

A cell architecture (``"type": "cell"``) is built by :mod:`kubetune.cell_model`; any other is a macro
architecture: a list of blocks, each ``{"kind": "conv"|"mlp", "width", "kernelSize",
"activation", "norm", "dropout", "skip"}``. The input shape decides what a conv block is: a
``Conv2d`` for ``(C, H, W)`` images, a ``Conv1d`` for ``(C, L)`` sequences, and for ``(F,)``
tabular inputs a conv block is built as an MLP block (its ``kernelSize`` is ignored), so one search
space serves every kind of data. Conv blocks keep the spatial size ('same' padding); the feature
map is flattened before the first MLP block and before the head, and average-pooled first when
it would exceed :data:`MAX_FLAT_FEATURES` values.

Example:
    >>> model = build_model({"blocks": [{"kind": "conv", "width": 32, "kernelSize": 5}]},
    ...                     input_shape=(1, 40), num_classes=10)
    >>> model(torch.zeros(2, 1, 40)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from kubetune import cell_model
from kubetune.architecture import ACTIVATIONS, BLOCK_DEFAULTS, BLOCK_FIELDS, DEFAULT_WIDTHS, KINDS, NORMS
from kubetune.layers import BATCH_NORM, CONV, ArchitectureError, flatten, positive_int

__all__ = [
    "ArchitectureError",
    "build_model",
    "count_parameters",
    "default_architecture",
]


def build_model(architecture: dict, *, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """Build the network for ``architecture``, initialised from ``seed`` without touching the global RNG.

    Args:
        architecture: ``{"blocks": [...]}``, whose missing block fields take
            :data:`kubetune.architecture.BLOCK_DEFAULTS`, or a cell architecture ``{"type": "cell", ...}``.
        input_shape: per-sample shape, ``(C, H, W)``, ``(C, L)`` or ``(F,)``.
        num_classes: outputs of the final linear layer.
        seed: seeds the weight initialisation, so the same call builds the same weights.

    Raises:
        ArchitectureError: a block or cell field is invalid, or the shapes are.
    """
    if isinstance(architecture, dict) and architecture.get("type") == "cell":
        make = functools.partial(cell_model.build, cell_model.validate(architecture))
    else:
        make = functools.partial(_build_blocks, _validate(architecture))
    input_shape = tuple(input_shape)
    if not 1 <= len(input_shape) <= 3 or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise ArchitectureError(f"input_shape must be (C, H, W), (C, L) or (F,) of positive ints but got {input_shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ArchitectureError(f"num_classes must be an integer of at least 2 but got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(input_shape=input_shape, num_classes=num_classes)


def _build_blocks(blocks: list[dict], *, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    shape = input_shape
    for block in blocks:
        spatial = block["kind"] == "conv" and len(shape) > 1
        if not spatial and len(shape) > 1:
            flat, shape = flatten(shape)
            layers.append(flat)
        layers.append(_Block(block, shape))
        shape = (block["width"], *shape[1:])
    if len(shape) > 1:
        flat, shape = flatten(shape)
        layers.append(flat)
    layers.append(nn.Linear(shape[0], num_classes))
    return nn.Sequential(*layers)


def default_architecture(input_shape: tuple[int, ...]) -> dict:
    """A small net that does well for the input kind, used when the experiment has no architecture space.

    Three batch-normed conv blocks of width 32 (kernel 3 for images, 5 for sequences); flat inputs get
    two batch-normed MLP blocks of 128. How well it does is measured in benchmarks/README.md.
    """
    if len(input_shape) == 1:
        return {"blocks": [{"kind": "mlp", "width": DEFAULT_WIDTHS["mlp"], "norm": "batch"} for _ in range(2)]}
    kernel = 3 if len(input_shape) == 3 else 5
    block = {"kind": "conv", "width": DEFAULT_WIDTHS["conv"], "kernelSize": kernel, "norm": "batch"}
    return {"blocks": [dict(block) for _ in range(3)]}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters, the usual measure of model size in a multi-objective search."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Block(nn.Module):
    """``op -> norm -> activation -> dropout``, plus ``input`` (projected when widths differ) if ``skip``."""

    def __init__(self, block: dict, shape: tuple[int, ...]):
        super().__init__()
        width = block["width"]
        layers = [_layer(shape, width, block["kernelSize"])]
        if block["norm"] != "none":
            layers.append(_norm(block["norm"], len(shape), width))
        layers.append(getattr(nn, ACTIVATIONS[block["activation"]])())
        if block["dropout"] > 0:
            layers.append(nn.Dropout(block["dropout"]))
        self.body = nn.Sequential(*layers)
        self.skip = None
        if block["skip"]:
            self.skip = nn.Identity() if shape[0] == width else _layer(shape, width, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.skip is None else out + self.skip(x)


def _layer(shape: tuple[int, ...], width: int, kernel_size: int, *, bias: bool = True) -> nn.Module:
    """A linear layer for flat inputs, else a 'same'-padded convolution over the spatial axes."""
    if len(shape) == 1:
        return nn.Linear(shape[0], width, bias=bias)
    return CONV[len(shape)](shape[0], width, kernel_size, padding="same", bias=bias)


def _norm(norm: str, rank: int, width: int) -> nn.Module:
    """Batch norm, or layer norm: over features for flat inputs, over channels and space for maps."""
    if norm == "batch":
        return BATCH_NORM[rank](width)
    return nn.LayerNorm(width) if rank == 1 else nn.GroupNorm(1, width)


def _validate(architecture: dict) -> list[dict]:
    """Returns the blocks with defaults filled in; raises ArchitectureError naming ``blocks[i].field``."""
    if not isinstance(architecture, dict) or not isinstance(architecture.get("blocks"), list):
        raise ArchitectureError(f"architecture must be a mapping with a 'blocks' list but got {architecture!r}")
    unknown = sorted(set(architecture) - {"blocks"})
    if unknown:
        raise ArchitectureError(f"architecture has unknown fields {unknown}; it holds only 'blocks'")
    return [_validate_block(index, block) for index, block in enumerate(architecture["blocks"])]


def _validate_block(index: int, block: dict) -> dict:
    where = f"blocks[{index}]"
    if not isinstance(block, dict):
        raise ArchitectureError(f"{where} must be a mapping but got {block!r}")
    unknown = sorted(set(block) - set(BLOCK_FIELDS))
    if unknown:
        raise ArchitectureError(f"{where} has unknown fields {unknown}; the fields are {list(BLOCK_FIELDS)}")
    for required in ("kind", "width"):
        if required not in block:
            raise ArchitectureError(f"{where}.{required} is required")
    block = {**BLOCK_DEFAULTS, **block}
    if block["kind"] not in KINDS:
        raise ArchitectureError(f"{where}.kind must be one of {list(KINDS)} but got {block['kind']!r}")
    fields = ("width", "kernelSize") if block["kind"] == "conv" else ("width",)
    for name in fields:
        block[name] = positive_int(f"{where}.{name}", block[name])
    if block["activation"] not in ACTIVATIONS:
        raise ArchitectureError(
            f"{where}.activation must be one of {list(ACTIVATIONS)} but got {block['activation']!r}"
        )
    if block["norm"] not in NORMS:
        raise ArchitectureError(f"{where}.norm must be one of {list(NORMS)} but got {block['norm']!r}")
    dropout = block["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ArchitectureError(f"{where}.dropout must lie in [0, 1) but got {dropout!r}")
    if not isinstance(block["skip"], bool):
        raise ArchitectureError(f"{where}.skip must be true or false but got {block['skip']!r}")
    return block
