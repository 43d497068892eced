"""kubetune.train: it learns, it is seeded, it prunes, and bad trials fail without raising."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from kubetune.data import load_split
from kubetune.nas import build_model
from kubetune.train import evaluate_model, load_model, pick_device, save_model, train_model

ARCHITECTURE = {"blocks": [{"kind": "conv", "width": 16, "norm": "batch"}, {"kind": "mlp", "width": 32}]}


@pytest.fixture(scope="module")
def digits():
    return load_split({"source": "builtin:digits", "seed": 0})


def _model(split, architecture=ARCHITECTURE):
    return build_model(architecture, input_shape=split.input_shape, num_classes=split.num_classes)


def test_a_short_run_learns(digits):
    result = train_model(_model(digits), digits, epochs=3, hyperparameters={"lr": 3e-3}, seed=0)
    assert result.status == "complete" and result.reason is None
    assert result.epochs_run == 3 and [row["epoch"] for row in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "timestamp"}
    assert result.history[-1]["val_accuracy"] > 0.85  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0 < result.train_seconds


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
def test_every_optimizer_trains(digits, optimizer):
    hyperparameters = {
        "optimizer": optimizer,
        "lr": 1e-2 if optimizer == "sgd" else 1e-3,
        "batchSize": 128,
        "weightDecay": 1e-4,
        "labelSmoothing": 0.1,
    }
    result = train_model(_model(digits), digits, epochs=1, hyperparameters=hyperparameters, seed=0)
    assert result.status == "complete" and result.history[0]["val_accuracy"] > 0.3


def test_same_seed_same_history(digits):
    runs = [train_model(_model(digits), digits, epochs=2, hyperparameters={}, seed=seed) for seed in (5, 5, 6)]
    losses = [[row["train_loss"] for row in run.history] for run in runs]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_on_epoch_true_prunes(digits):
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics["val_accuracy"]))
        return epoch == 2

    result = train_model(_model(digits), digits, epochs=5, hyperparameters={}, seed=0, on_epoch=on_epoch)
    assert result.status == "pruned" and result.epochs_run == 2 and "epoch 2" in result.reason
    assert [epoch for epoch, _ in seen] == [1, 2]


def test_nan_loss_fails_without_raising(digits):
    x = digits.x_train.copy()
    x[5] = np.nan
    result = train_model(_model(digits), dataclasses.replace(digits, x_train=x), epochs=3, hyperparameters={}, seed=0)
    assert result.status == "failed"
    assert result.reason == "loss became nan at epoch 1"
    assert result.epochs_run == 0 and result.history == []


def test_diverging_learning_rate_fails(digits):
    result = train_model(
        _model(digits, {"blocks": [{"kind": "mlp", "width": 32}]}),
        digits,
        epochs=3,
        hyperparameters={"lr": 1e10, "optimizer": "sgd"},
        seed=0,
    )
    assert result.status == "failed" and "became" in result.reason


class _Hungry(nn.Linear):
    def forward(self, x):
        raise MemoryError("cannot allocate 1 TB")


def test_out_of_memory_fails_with_reason(digits):
    result = train_model(_Hungry(1, 1), digits, epochs=1, hyperparameters={}, seed=0)
    assert result.status == "failed" and result.reason == "out of memory at epoch 1: cannot allocate 1 TB"


def test_unknown_optimizer_names_the_choices(digits):
    allowed = r"\['adam', 'adamw', 'sgd', 'rmsprop'\]"
    with pytest.raises(ValueError, match=f"optimizer must be one of {allowed} but got 'lbfgs'"):
        train_model(_model(digits), digits, epochs=1, hyperparameters={"optimizer": "lbfgs"}, seed=0)


def test_unknown_hyperparameter_names_it_and_the_known_ones(digits):
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['learningRate'\].*'lr'"):
        train_model(_model(digits), digits, epochs=1, hyperparameters={"learningRate": 0.1}, seed=0)


@pytest.mark.parametrize("name, value", [("lr", 0.0), ("batchSize", 0), ("momentum", 1.5), ("labelSmoothing", -0.1)])
def test_out_of_range_hyperparameter(digits, name, value):
    with pytest.raises(ValueError, match=f"{name} must"):
        train_model(_model(digits), digits, epochs=1, hyperparameters={name: value}, seed=0)


def test_trailing_single_sample_batch_is_skipped_for_batch_norm(digits):
    small = dataclasses.replace(digits, x_train=digits.x_train[:65], y_train=digits.y_train[:65])
    model = _model(digits, {"blocks": [{"kind": "mlp", "width": 8, "norm": "batch"}]})
    assert train_model(model, small, epochs=1, hyperparameters={"batchSize": 64}, seed=0).status == "complete"


def test_evaluate_model_matches_the_last_epoch(digits):
    model = _model(digits)
    result = train_model(model, digits, epochs=1, hyperparameters={}, seed=0)
    metrics = evaluate_model(model, digits.x_val, digits.y_val, batch_size=100)
    assert metrics["accuracy"] == pytest.approx(result.history[-1]["val_accuracy"])
    assert metrics["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_save_and_load_give_identical_predictions(tmp_path, digits):
    model = _model(digits)
    train_model(model, digits, epochs=1, hyperparameters={}, seed=0)
    path = tmp_path / "model" / "model.pt"
    save_model(model, ARCHITECTURE, path, input_shape=digits.input_shape, num_classes=digits.num_classes)
    loaded, info = load_model(path)
    assert info == {"architecture": ARCHITECTURE, "input_shape": (1, 8, 8), "num_classes": 10}
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():  # load_model rebuilds on the CPU, wherever the model trained
        torch.testing.assert_close(loaded(x), model.cpu().eval()(x), rtol=0, atol=0)


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
