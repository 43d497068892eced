"""First-order DARTS (Liu et al. 2019) on the weight-sharing supernet: a weight per operation on each edge
(``alpha``, a softmax per edge, shared by the stacked cells as a cell architecture shares its cell), trained
on the validation split while the network's weights train on the training split, one step each in turn.
First order: the architecture step takes the weights as they are, without the unrolled look-ahead.

:func:`derive` reads the discrete cell off ``alpha`` as DARTS does: on every edge the strongest operation
other than ``zero`` (which DARTS never picks, since its weight says little), and per node only the
``inputs`` (DARTS: 2) edges whose operation weighs most keep it; the rest become ``zero``.

Example:
    >>> net = Supernet(space, input_shape=split.input_shape, num_classes=split.num_classes, seed=0)
    >>> result = search(net, split, epochs=10, hyperparameters={"lr": 3e-3}, seed=0)
    >>> result.architecture  # a kubetune.cell_model architecture, ready to train as a trial
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from kubetune import cell_model
from kubetune.data import SplitData
from kubetune.supernet import Supernet
from kubetune.train import make_optimizer, pick_device

__all__ = ["DartsResult", "derive", "search"]

# DARTS' architecture optimizer (Adam, betas (0.5, 0.999), weight decay 1e-3); its learning rate is 3e-4 for
# 50 epochs on CIFAR-10, larger here because the searches are a few epochs long.
ALPHA_LR = 3e-3
ALPHA_WEIGHT_DECAY = 1e-3
DARTS_INPUTS = 2


@dataclass
class DartsResult:
    """The derived cell, the final operation weights (edges x operations, rows sum to 1) and per-epoch losses."""

    architecture: dict
    weights: list[list[float]]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def search(
    supernet: Supernet,
    split: SplitData,
    *,
    epochs: int,
    hyperparameters: dict,
    seed: int,
    alpha_lr: float = ALPHA_LR,
    inputs: int = DARTS_INPUTS,
    device: str | None = None,
) -> DartsResult:
    """Alternate an architecture step on a validation batch and a weight step on a training batch.

    ``hyperparameters`` (the trainer's names: lr, optimizer, batchSize, ...) configure the weights' optimizer.
    """
    started = time.perf_counter()
    device = pick_device(device)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    supernet.to(device)
    alpha = torch.zeros(len(supernet.edges), len(supernet.operations), device=device, requires_grad=True)
    weight_optimizer, settings = make_optimizer(hyperparameters, supernet.parameters())
    alpha_optimizer = torch.optim.Adam([alpha], lr=alpha_lr, betas=(0.5, 0.999), weight_decay=ALPHA_WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings["labelSmoothing"])
    size = settings["batchSize"]
    validation = _batches(split.x_val, split.y_val, size, order, device)
    history = []
    for epoch in range(1, epochs + 1):
        supernet.train()
        total, seen = 0.0, 0
        for x, y in _epoch(split.x_train, split.y_train, size, order, device):
            x_val, y_val = next(validation)
            alpha_optimizer.zero_grad(set_to_none=True)
            loss_fn(supernet.run(x_val, weights=alpha.softmax(-1)), y_val).backward()
            alpha_optimizer.step()
            weight_optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(supernet.run(x, weights=alpha.detach().softmax(-1)), y)
            loss.backward()
            weight_optimizer.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
        history.append({"epoch": epoch, "train_loss": total / seen, "weights": alpha.detach().softmax(-1).tolist()})
    weights = alpha.detach().softmax(-1).cpu().tolist()
    architecture = derive(weights, supernet, inputs=inputs)
    return DartsResult(architecture, weights, history, time.perf_counter() - started)


def derive(weights: list[list[float]], supernet: Supernet, *, inputs: int = DARTS_INPUTS) -> dict:
    """The discrete cell of per-edge operation ``weights`` (rows in the supernet's edge order), validated."""
    nodes: list[list[str]] = [["zero"] * node for node in range(1, supernet.frame["nodes"] + 1)]
    strongest: dict[int, list[tuple[float, int, str]]] = {}
    for row, (node, source) in zip(weights, supernet.edges, strict=True):
        candidates = [(w, name) for w, name in zip(row, supernet.operations, strict=True) if name != "zero"]
        if candidates:
            weight, name = max(candidates, key=lambda pair: pair[0])
            strongest.setdefault(node, []).append((weight, source, name))
    for node, edges in strongest.items():
        for _, source, name in sorted(edges, key=lambda edge: -edge[0])[:inputs]:
            nodes[node - 1][source] = name
    return cell_model.validate({**supernet.frame, "edges": nodes})


def _epoch(x, y, size: int, order: torch.Generator, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass in batches of ``size``; a last batch of one sample is dropped (batch norm needs two)."""
    permutation = torch.randperm(len(y), generator=order)
    features = torch.as_tensor(x, dtype=torch.float32)[permutation].to(device)
    labels = torch.as_tensor(y, dtype=torch.int64)[permutation].to(device)
    for start in range(0, len(labels), size):
        if len(labels) - start > 1:
            yield features[start : start + size], labels[start : start + size]


def _batches(x, y, size: int, order: torch.Generator, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled passes over ``(x, y)`` without end."""
    while True:
        yield from _epoch(x, y, size, order, device)
