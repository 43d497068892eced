"""The hyperparameters the built-in trainer understands, with their defaults and the values it accepts.

Kept apart from the trainer so the spec can validate every value a trial can get without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HYPERPARAMETERS = {
    "lr": 1e-3,
    "optimizer": "adam",
    "batchSize": 64,
    "weightDecay": 0.0,
    "momentum": 0.9,
    "labelSmoothing": 0.0,
}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
MAX_BATCH_SIZE = 65_536


@dataclass(frozen=True)
class Domain:
    """The numbers the trainer accepts for one numeric hyperparameter."""

    low: float
    high: float = math.inf
    low_open: bool = False  # ``low`` itself is not accepted
    high_open: bool = True  # ``high`` itself is not accepted
    integer: bool = False

    def admits(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """``an integer in [1, 65536]``, ``a number in (0, inf)``."""
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


DOMAINS = {
    "lr": Domain(0, low_open=True),
    "batchSize": Domain(1, MAX_BATCH_SIZE, high_open=False, integer=True),
    "weightDecay": Domain(0),
    "momentum": Domain(0, 1),
    "labelSmoothing": Domain(0, 1),
}
