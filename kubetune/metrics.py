"""Held-out classification metrics from saved class scores, in NumPy (the evaluate step needs no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_metrics"]


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``logits`` (N, classes) against integer ``labels`` (N,).

    Example:
        >>> classification_metrics(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 0]))["accuracy"]
        0.5
    """
    if len(labels) == 0 or logits.shape[0] != len(labels):
        raise ValueError(f"need one row of scores per label but got {logits.shape[0]} rows for {len(labels)} labels")
    scores = logits.astype(np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = log_probabilities[np.arange(len(labels)), labels]
    return {"accuracy": float((scores.argmax(axis=1) == labels).mean()), "loss": float(-picked.mean())}
