"""A weight-sharing supernet over a cell space: every edge holds all of the space's operations (a mixed edge),
so one training serves every cell of the space.

One-shot ranking (Bender et al. 2018; single-path sampling as Guo et al. 2020): :func:`train_one_shot`
trains the supernet with one operation per edge drawn uniformly for every batch (the same draw in every
stacked cell, as a cell architecture repeats one cell); :meth:`Supernet.evaluate` then scores a candidate
with the shared weights, after re-estimating the batch norm statistics for that subnetwork on a few
training batches (statistics averaged over random paths fit no single path, and rank it badly). DARTS
(:mod:`kubetune.darts`) weights the operations of each edge instead, through :meth:`Supernet.run`.

A supernet has one frame: the cell count, width and reductions of :func:`kubetune.cell_model.stack`, so each
subnetwork is exactly the network :func:`kubetune.cell_model.build` makes for its architecture. A candidate
with another cell count or width is ranked by a supernet of its own frame (:func:`frames` lists them), not
by its edges inside a larger one: the reductions fall before different cells in a 1- and a 2-cell network,
and a narrower network is not a slice of a wider one's trained weights.

Example:
    >>> net = Supernet(space, input_shape=split.input_shape, num_classes=split.num_classes, seed=0)
    >>> train_one_shot(net, split, epochs=30, hyperparameters={"lr": 3e-3}, seed=0)
    >>> net.evaluate("cell:n2:c2:w32:r1:conv3|skip,conv1", split)["accuracy"]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kubetune import cell_model
from kubetune.architecture import cell_edges
from kubetune.data import SplitData
from kubetune.encoding import decode
from kubetune.spec import CellSpace
from kubetune.train import TrainResult, evaluate_model, pick_device, train_model

__all__ = ["MixedEdge", "Supernet", "frames", "recalibrate", "train_one_shot"]

CALIBRATION_BATCHES = 8


def frames(space: CellSpace) -> list[tuple[int, int]]:
    """Every ``(cells, width)`` of ``space``: the supernets that rank all of its architectures, one each."""
    cells = range(space.cells.low, space.cells.high + 1)
    return list(itertools.product(cells, (int(width) for width in space.width.choices)))


class MixedEdge(nn.Module):
    """One edge with a module per operation of the space; ``zero`` has none and gives zeros.

    Operations that build the same module (conv3 and conv1 on flat inputs, see FLAT_OPERATIONS) share it.
    """

    def __init__(self, operations: list[str], width: int, rank: int):
        super().__init__()
        self.resolved = [cell_model.resolved(operation, rank) for operation in operations]
        self.paths = nn.ModuleDict(
            {
                name: cell_model.make_operation(name, width, rank)
                for name in dict.fromkeys(self.resolved)
                if name != "zero"
            }
        )

    def forward(self, x: torch.Tensor, choice: int | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Operation number ``choice`` alone, or the sum of every operation scaled by its entry of ``weights``."""
        if choice is not None:
            name = self.resolved[choice]
            return torch.zeros_like(x) if name == "zero" else self.paths[name](x)
        assert weights is not None
        terms = [w * self.paths[name](x) for w, name in zip(weights, self.resolved, strict=True) if name != "zero"]
        return torch.stack(terms).sum(0) if terms else torch.zeros_like(x)


class _MixedCell(nn.Module):
    """cell_model.Cell with a mixed edge per edge; the supernet sets ``route`` before each forward."""

    def __init__(self, nodes: int, operations: list[str], width: int, rank: int):
        super().__init__()
        self.edges = cell_edges(nodes)
        self.mixed = nn.ModuleDict({f"n{n}_in{i}": MixedEdge(operations, width, rank) for n, i in self.edges})
        self.route: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path, weights = self.route.get("path"), self.route.get("weights")
        states = [x]
        terms: list[torch.Tensor] = []
        for index, (node, source) in enumerate(self.edges):
            choice = None if path is None else path[index]
            edge_weights = None if weights is None else weights[index]
            terms.append(self.mixed[f"n{node}_in{source}"](states[source], choice, edge_weights))
            if source == node - 1:  # the node's last input
                states.append(torch.stack(terms).sum(0))
                terms = []
        return torch.stack(states[1:]).mean(0)


class Supernet(nn.Module):
    """Every cell of ``space`` in one frame (``cells`` and ``width``, by default the space's largest).

    Calling it (as :func:`kubetune.train.train_model` does) runs a path drawn uniformly from ``generator``.
    """

    def __init__(
        self,
        space: CellSpace,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        cells: int | None = None,
        width: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.operations = [str(name) for name in space.operations.choices]
        self.frame: dict[str, Any] = {
            "type": "cell",
            "nodes": space.nodes,
            "cells": space.cells.high if cells is None else cells,
            "width": max(space.width.choices) if width is None else width,
            "reductions": space.reductions,
        }
        self.edges = cell_edges(space.nodes)
        self.input_shape = tuple(input_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = cell_model.stack(
                self.frame,
                input_shape=self.input_shape,
                num_classes=num_classes,
                cell=lambda w, rank: _MixedCell(space.nodes, self.operations, w, rank),
            )
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def for_split(cls, space: CellSpace, split: SplitData, *, cells: int, width: int, seed: int) -> Supernet:
        """The supernet of frame ``(cells, width)`` for ``split``'s input shape and classes."""
        return cls(
            space, input_shape=split.input_shape, num_classes=split.num_classes, cells=cells, width=width, seed=seed
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = torch.randint(len(self.operations), (len(self.edges),), generator=self.generator).tolist()
        return self.run(x, path=path)

    def run(self, x: torch.Tensor, *, path: list[int] | None = None, weights: torch.Tensor | None = None):
        """The subnetwork of ``path`` (an operation index per edge, in cell_edges order), or with ``weights``
        (edges x operations) the continuous relaxation, every edge the weighted sum of its operations."""
        for cell in self._cells():
            cell.route = {"path": path, "weights": weights}
        return self.network(x)

    def path(self, architecture: dict | str) -> list[int]:
        """The operation indices of a cell architecture (or its kubetune.encoding code) in this frame.

        Raises:
            ValueError: its nodes, cells or width differ from the frame's, or an operation is not the space's.
        """
        architecture = decode(architecture) if isinstance(architecture, str) else architecture
        differ = [f for f in ("nodes", "cells", "width", "reductions") if int(architecture[f]) != self.frame[f]]
        if differ:
            raise ValueError(
                f"the architecture's {differ} differ from this supernet's frame {self.frame}; "
                "rank it with a supernet of its own frame (kubetune.supernet.frames)"
            )
        names = [architecture["edges"][node - 1][source] for node, source in self.edges]
        unknown = sorted(set(names) - set(self.operations))
        if unknown:
            raise ValueError(f"operations {unknown} are not among the supernet's {self.operations}")
        return [self.operations.index(name) for name in names]

    def subnet(self, architecture: dict | str) -> nn.Module:
        """The candidate as a module that runs on this supernet's weights (no copy)."""
        return _Subnet(self, self.path(architecture))

    def evaluate(
        self,
        architecture: dict | str,
        split: SplitData,
        *,
        calibration_batches: int = CALIBRATION_BATCHES,
        batch_size: int = 128,
        device: str | None = None,
    ) -> dict:
        """Validation accuracy and loss of the candidate with the shared weights, batch norm recalibrated first.

        It overwrites the batch norm statistics: train no further after ranking.
        """
        subnet = self.subnet(architecture)
        recalibrate(subnet, split.x_train, batches=calibration_batches, batch_size=batch_size, device=device)
        return evaluate_model(subnet, split.x_val, split.y_val, device=device)

    def _cells(self) -> Iterator[_MixedCell]:
        return (module for module in self.network if isinstance(module, _MixedCell))


class _Subnet(nn.Module):
    def __init__(self, supernet: Supernet, path: list[int]):
        super().__init__()
        self.supernet, self.path = supernet, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet.run(x, path=self.path)


def recalibrate(model: nn.Module, x, *, batches: int, batch_size: int, device: str | None = None) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over the first ``batches``
    batches of ``x`` (always the same samples, so candidates are compared on equal terms)."""
    device = pick_device(device)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.to(device).train()
    features = torch.as_tensor(x[: batches * batch_size], dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            model(features[start : start + batch_size])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def train_one_shot(
    supernet: Supernet, split: SplitData, *, epochs: int, hyperparameters: dict, seed: int, device: str | None = None
) -> TrainResult:
    """Single-path one-shot training by the trial's own trainer: every batch a fresh uniform path.

    Its per-epoch ``val_accuracy`` is that of random paths under averaged statistics: a progress signal, not a
    candidate's score.
    """
    supernet.generator.manual_seed(seed)
    return train_model(supernet, split, epochs=epochs, hyperparameters=hyperparameters, seed=seed, device=device)
