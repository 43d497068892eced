"""The architecture vocabulary: what a block may be, shared by the spec (what a user may choose) and the
model builder (what it builds), so that the two cannot drift apart.

Plain data without torch, so the spec can validate an architecture space without importing it.
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "BLOCK_DEFAULTS", "BLOCK_FIELDS", "KINDS", "MAX_FLAT_FEATURES", "NORMS"]

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
# A block's fields, in the order a trial suggests them (``kernelSize`` after ``kind``: conv blocks only).
BLOCK_FIELDS = ("kind", "width", *BLOCK_DEFAULTS)
# A flattened feature map larger than this is average-pooled first, so the next linear layer stays small.
MAX_FLAT_FEATURES = 4096
