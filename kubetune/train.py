"""The trainer: fit a model on an in-memory split, epoch by epoch, reporting to a pruning callback.

Built for many short trials on CPU as well as GPU: the whole split lives in device memory as
tensors, each epoch gathers one shuffled copy and slices batches from it (no DataLoader), and
validation runs under ``torch.inference_mode``. On CUDA it trains with automatic mixed precision.
A diverging or out-of-memory trial ends as ``status="failed"`` with a reason; it never raises, so
one bad trial cannot stop a search. It leaves global thread settings to the caller.

Example:
    >>> result = train_model(model, split, epochs=5, hyperparameters={"lr": 3e-3}, seed=0)
    >>> result.status, result.history[-1]["val_accuracy"]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kubetune.data import SplitData
from kubetune.hyperparameters import DOMAINS, HYPERPARAMETERS, OPTIMIZERS
from kubetune.nas import build_model

__all__ = [
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "TrainResult",
    "evaluate_model",
    "load_model",
    "make_optimizer",
    "pick_device",
    "predict_logits",
    "save_model",
    "train_model",
    "wall_clock_ms",
]


@dataclass
class TrainResult:
    """What a trial's training produced; ``history`` holds only epochs that finished with finite losses, each
    row with its metrics, its duration in ``seconds`` and the wall-clock ``timestamp`` (ms) it ended at."""

    status: str
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    reason: str | None = None
    train_seconds: float = 0.0


def train_model(
    model: nn.Module,
    split: SplitData,
    *,
    epochs: int,
    hyperparameters: dict,
    seed: int,
    device: str | None = None,
    on_epoch: Callable[[int, dict], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``split.x_train`` and validate on ``split.x_val`` after every epoch.

    Args:
        model: the network; it is moved to ``device`` and left there.
        split: the data, as :func:`kubetune.data.load_split` returns it.
        epochs: the most epochs to run.
        hyperparameters: names from :data:`HYPERPARAMETERS`; missing ones take its defaults.
        seed: seeds the data order and any randomness in the model (dropout).
        device: ``"cpu"``, ``"cuda"`` or None for CUDA when available.
        on_epoch: called as ``on_epoch(epoch, metrics)`` after each epoch, with the history row as
            ``metrics``; returning True stops training as ``"pruned"``.

    Raises:
        ValueError: an unknown hyperparameter or optimizer, or a value out of range.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer but got {epochs!r}")
    settings = _settings(hyperparameters)
    device = pick_device(device)
    amp = device.startswith("cuda")
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings["labelSmoothing"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    started = time.perf_counter()
    epoch = 0
    try:
        x_train, y_train = _features(split.x_train, device), _labels(split.y_train, device)
        x_val, y_val = _features(split.x_val, device), _labels(split.y_val, device)
        model.to(device)
        optimizer = _optimizer(settings, model.parameters())
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            permutation = torch.randperm(len(y_train), generator=order).to(device)
            train_loss = _train_epoch(
                model,
                optimizer,
                scaler,
                loss_fn,
                x_train[permutation],
                y_train[permutation],
                batch_size=settings["batchSize"],
                amp=amp,
            )
            validation = _evaluate(model, x_val, y_val, batch_size=max(512, settings["batchSize"]), amp=amp)
            for name, value in (("loss", train_loss), ("validation loss", validation["loss"])):
                if not math.isfinite(value):
                    return _result("failed", history, started, f"{name} became {value} at epoch {epoch}")
            metrics = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": validation["loss"],
                "val_accuracy": validation["accuracy"],
                "seconds": time.perf_counter() - epoch_start,
                "timestamp": wall_clock_ms(),
            }
            history.append(metrics)
            if on_epoch is not None and on_epoch(epoch, dict(metrics)):
                return _result("pruned", history, started, f"pruned after epoch {epoch}")
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        if amp:
            torch.cuda.empty_cache()
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"at epoch {epoch}" if epoch else f"while moving the data and model to {device}"
        return _result("failed", history, started, f"out of memory {where}: {first_line}")
    return _result("complete", history, started, None)


def evaluate_model(model: nn.Module, x, y, *, batch_size: int = 512, device: str | None = None) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)`` (arrays or tensors), in eval mode."""
    if len(y) == 0:
        raise ValueError("evaluate_model needs at least one sample but got an empty array")
    device = pick_device(device)
    model.to(device)
    return _evaluate(
        model, _features(x, device), _labels(y, device), batch_size=batch_size, amp=device.startswith("cuda")
    )


def predict_logits(model: nn.Module, x, *, batch_size: int = 512, device: str | None = None) -> np.ndarray:
    """Class scores of ``model`` on ``x`` in eval mode, as float32 NumPy: what the evaluate step scores."""
    device = pick_device(device)
    model.to(device).eval()
    features = _features(x, device)
    with torch.inference_mode():
        batches = [model(features[start : start + batch_size]).float() for start in range(0, len(features), batch_size)]
    return torch.cat(batches).cpu().numpy() if batches else np.zeros((0, 0), dtype=np.float32)


def pick_device(requested: str | None = None) -> str:
    """``requested`` if usable, else ``"cuda"`` when available and ``"cpu"`` otherwise."""
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(requested).type if isinstance(requested, str) else None
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or None but got {requested!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was requested but CUDA is not available here; use 'cpu' or None")
    return requested


def save_model(
    model: nn.Module, architecture: dict, path: str | Path, *, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Save weights (on CPU) with what :func:`load_model` needs to rebuild the network; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "architecture": architecture,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved model on CPU, in eval mode; returns ``(model, info)`` with architecture and shapes."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    info = {
        "architecture": checkpoint["architecture"],
        "input_shape": tuple(checkpoint["input_shape"]),
        "num_classes": checkpoint["num_classes"],
    }
    model = build_model(info["architecture"], input_shape=info["input_shape"], num_classes=info["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), info


def make_optimizer(hyperparameters: dict, parameters) -> tuple[torch.optim.Optimizer, dict]:
    """The optimizer :func:`train_model` builds for ``hyperparameters``, and the checked settings with every
    default filled in, for training loops of their own (DARTS alternates two optimizers)."""
    settings = _settings(hyperparameters)
    return _optimizer(settings, parameters), settings


def _settings(hyperparameters: dict) -> dict:
    unknown = sorted(set(hyperparameters) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; the trainer understands {list(HYPERPARAMETERS)}")
    settings = {**HYPERPARAMETERS, **hyperparameters}
    if settings["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)} but got {settings['optimizer']!r}")
    for name, domain in DOMAINS.items():  # the same domains the spec is validated against
        if not domain.admits(settings[name]):
            raise ValueError(f"{name} must be {domain.describe()} but got {settings[name]!r}")
    settings["batchSize"] = int(settings["batchSize"])
    return settings


def _optimizer(settings: dict, parameters) -> torch.optim.Optimizer:
    lr, decay, momentum = settings["lr"], settings["weightDecay"], settings["momentum"]
    return {
        "adam": lambda: torch.optim.Adam(parameters, lr=lr, weight_decay=decay),
        "adamw": lambda: torch.optim.AdamW(parameters, lr=lr, weight_decay=decay),
        "sgd": lambda: torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=decay),
        "rmsprop": lambda: torch.optim.RMSprop(parameters, lr=lr, momentum=momentum, weight_decay=decay),
    }[settings["optimizer"]]()


def _features(values, device: str) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device)


def _labels(values, device: str) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64, device=device)


def _train_epoch(
    model, optimizer, scaler, loss_fn, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, amp: bool
) -> float:
    """One pass over already-shuffled tensors; returns the mean training loss (NaN if it diverged).

    A trailing batch of a single sample is skipped: batch norm cannot train on one value per channel.
    """
    total = torch.zeros((), device=x.device)
    seen = 0
    for start in range(0, len(y), batch_size):
        stop = min(start + batch_size, len(y))
        if stop - start == 1 and start > 0:
            break
        with torch.autocast("cuda", enabled=amp):
            loss = loss_fn(model(x[start:stop]), y[start:stop])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * (stop - start)
        seen += stop - start
    return (total / seen).item()


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, amp: bool) -> dict:
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device, dtype=torch.long)
    with torch.inference_mode(), torch.autocast("cuda", enabled=amp):
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size]).float()
            target = y[start : start + batch_size]
            loss += nn.functional.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(dim=1) == target).sum()
    return {"accuracy": correct.item() / len(y), "loss": loss.item() / len(y)}


def wall_clock_ms() -> int:
    """Wall-clock milliseconds since the epoch: when an epoch ended, as MLflow records a metric's time."""
    return int(time.time() * 1000)


def _result(status: str, history: list[dict], started: float, reason: str | None) -> TrainResult:
    return TrainResult(
        status=status,
        epochs_run=len(history),
        history=history,
        reason=reason,
        train_seconds=time.perf_counter() - started,
    )
