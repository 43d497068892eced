"""What meta-learning needs recorded with every trial: the hardware it trained on and the data set's profile.

:mod:`kubetune.meta` reads them back from the study database to learn across experiments; the warm-start
step computes the same profile for a new data set, so both sides describe data the same way.
"""

from __future__ import annotations

import os
import platform

import numpy as np

from kubetune.data import SplitData

__all__ = ["data_profile", "hardware"]


def hardware(device: str) -> dict:
    """The trainer's machine: ``device`` ("cpu" or "cuda"), its name, CPU count, torch threads, platform."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": device,
        "device_name": name,
        "cpu_count": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def data_profile(split: SplitData, source: str) -> dict:
    """Rows, features, classes, class balance (smallest over largest class count in training), input shape."""
    counts = np.bincount(np.asarray(split.y_train, dtype=np.int64), minlength=split.num_classes)
    present = counts[counts > 0]
    return {
        "rows": int(len(split.y_train) + len(split.y_val) + len(split.y_test)),
        "features": int(np.prod(split.input_shape)),
        "classes": int(split.num_classes),
        "class_balance": float(present.min() / present.max()) if len(present) else 0.0,
        "input_shape": [int(n) for n in split.input_shape],
        "source": source,
    }
