"""The evaluate step's NumPy metrics agree with the trainer's torch evaluation."""

import numpy as np
import pytest

from kubetune.metrics import classification_metrics
from kubetune.nas import build_model
from kubetune.train import evaluate_model, predict_logits


def test_numpy_metrics_match_torch_evaluation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=50)
    model = build_model({"blocks": [{"kind": "conv", "width": 8}]}, input_shape=(1, 8, 8), num_classes=10)
    expected = evaluate_model(model, x, y)
    got = classification_metrics(predict_logits(model, x), y)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_confident_right_and_wrong_answers():
    logits = np.array([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    metrics = classification_metrics(logits, np.array([0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["loss"] == pytest.approx(10.0 / 3, rel=1e-3)


def test_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match="one row of scores per label"):
        classification_metrics(np.zeros((2, 3)), np.array([0]))
