"""The weight-sharing supernet and first-order DARTS, on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kubetune import cell_model
from kubetune.darts import derive, search
from kubetune.data import SplitData
from kubetune.encoding import encode
from kubetune.spec import CellSpace
from kubetune.supernet import MixedEdge, Supernet, frames, recalibrate, train_one_shot

OPERATIONS = ["conv3", "conv1", "avgpool", "skip", "zero"]
SPACE = CellSpace(
    type="cell", nodes=2, operations={"choices": OPERATIONS}, cells={"low": 1, "high": 2}, width={"choices": [4, 8]}
)


def _split(n: int = 96, length: int = 8, seed: int = 0) -> SplitData:
    """Two classes told apart by the sign of the signal's sum: learnable by a convolution, not by zeros."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * n, 1, length)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    return SplitData(x[:n], y[:n], x[n : 2 * n], y[n : 2 * n], x[2 * n :], y[2 * n :], 2, (1, length))


def _net(space: CellSpace = SPACE, seed: int = 0, **frame) -> Supernet:
    return Supernet(space, input_shape=(1, 8), num_classes=2, seed=seed, **frame)


def _cell(edges: list[list[str]], cells: int = 2, width: int = 8) -> dict:
    return {"type": "cell", "nodes": 2, "edges": edges, "cells": cells, "width": width, "reductions": 1}


@pytest.mark.parametrize("rank", [1, 2])
def test_a_mixed_edge_on_one_path_is_that_operation_alone(rank):
    torch.manual_seed(0)
    edge = MixedEdge(OPERATIONS, 4, rank).eval()
    x = torch.randn(3, 4, 6) if rank == 2 else torch.randn(3, 4)
    for choice, name in enumerate(OPERATIONS):
        resolved = cell_model.resolved(name, rank)
        single = cell_model.make_operation(name, 4, rank) if resolved != "zero" else None
        if single is not None:
            single.load_state_dict(edge.paths[resolved].state_dict())
        expected = torch.zeros_like(x) if single is None else single.eval()(x)
        assert torch.equal(edge(x, choice), expected), name
    if rank == 1:  # flat inputs build conv3 and conv1 alike (linear): one shared module
        assert sorted(edge.paths) == ["linear", "skip"]


def test_a_subnet_is_the_network_cell_model_builds_with_the_supernet_weights():
    net = _net().eval()
    architecture = _cell([["conv3"], ["skip", "zero"]])
    built = cell_model.build(cell_model.validate(architecture), input_shape=(1, 8), num_classes=2).eval()
    shared = net.network.state_dict()
    copied = {}
    for name in built.state_dict():
        if ".operations." in name:  # <cell>.operations.n1_in0.<rest> -> <cell>.mixed.n1_in0.paths.<op>.<rest>
            cell, _, rest = name.partition(".operations.")
            edge, _, tail = rest.partition(".")
            node, source = int(edge[1]), int(edge.split("in")[1])
            operation = architecture["edges"][node - 1][source]
            copied[name] = shared[f"{cell}.mixed.{edge}.paths.{operation}.{tail}"]
        else:
            copied[name] = shared[name]
    built.load_state_dict(copied)
    x = torch.randn(5, 1, 8)
    assert torch.allclose(net.subnet(architecture)(x), built(x), atol=1e-6)


def test_a_subnet_runs_on_the_shared_weights_of_its_own_operations_only():
    net = _net().eval()
    subnet = net.subnet("cell:n2:c2:w8:r1:conv3|skip,zero")
    x = torch.randn(5, 1, 8)
    before = subnet(x)
    cells = [module for module in net.network if hasattr(module, "mixed")]
    with torch.no_grad():
        cells[0].mixed["n1_in0"].paths["conv1"][1].weight.add_(1.0)  # an operation the subnet does not use
    assert torch.equal(subnet(x), before)
    with torch.no_grad():
        cells[0].mixed["n1_in0"].paths["conv3"][1].weight.add_(1.0)  # the one it uses
    assert not torch.allclose(subnet(x), before)


def test_recalibration_replaces_the_statistics_by_the_subnets_own():
    net = _net()
    stem_norm = net.network[0][1]
    with torch.no_grad():
        stem_norm.running_mean.fill_(100.0)
    x = torch.randn(64, 1, 8)
    subnet = net.subnet("cell:n2:c2:w8:r1:conv3|skip,conv1")
    recalibrate(subnet, x.numpy(), batches=2, batch_size=32, device="cpu")
    with torch.no_grad():
        expected = net.network[0][0](x).mean(dim=(0, 2))  # equal batches: the mean of batch means
    assert torch.allclose(stem_norm.running_mean, expected, atol=1e-5)
    assert stem_norm.momentum == 0.1 and not subnet.training
    with torch.no_grad():
        evaluated = subnet(x)
        subnet.train()
        trained = subnet(x)
    assert torch.allclose(evaluated, trained, atol=0.05)  # eval mode now sees what training mode sees


def test_one_shot_training_is_seeded_and_ranks_a_working_cell_above_an_empty_one():
    split = _split()
    scores = []
    for _ in range(2):
        net = _net(cells=1, width=8)
        result = train_one_shot(net, split, epochs=8, hyperparameters={"lr": 1e-2, "batchSize": 32}, seed=3)
        assert result.status == "complete"
        codes = ("cell:n2:c1:w8:r1:conv3|zero,conv1", "cell:n2:c1:w8:r1:zero|zero,zero")
        scores.append([net.evaluate(code, split, device="cpu")["accuracy"] for code in codes])
    assert scores[0] == scores[1]
    working, empty = scores[0]
    assert working > 0.8 and empty < 0.65


def test_a_candidate_of_another_frame_or_operation_is_refused():
    net = _net()
    with pytest.raises(ValueError, match="frame"):
        net.path(_cell([["conv3"], ["skip", "zero"]], cells=1))
    with pytest.raises(ValueError, match="linear"):
        net.path(_cell([["linear"], ["skip", "zero"]]))
    assert frames(SPACE) == [(1, 4), (1, 8), (2, 4), (2, 8)]


def test_darts_moves_the_weights_toward_the_operation_that_learns():
    space = CellSpace(
        type="cell",
        nodes=1,
        operations={"choices": ["zero", "conv3"]},
        cells={"low": 1, "high": 1},
        width={"choices": [4]},
        reductions=0,
    )
    results = [
        search(
            Supernet(space, input_shape=(1, 8), num_classes=2, seed=0),
            _split(),
            epochs=4,
            hyperparameters={"lr": 1e-2, "batchSize": 16},
            seed=0,
            alpha_lr=3e-2,
        )
        for _ in range(2)
    ]
    zero, conv3 = results[0].weights[0]
    assert conv3 > 0.6 > zero  # from 0.5 each
    assert results[0].architecture["edges"] == [["conv3"]]
    assert len(results[0].history) == 4
    assert results[1].weights == results[0].weights  # seeded


def test_derive_picks_the_strongest_nonzero_operation_and_the_strongest_inputs():
    net = _net()  # edges n1_in0, n2_in0, n2_in1; operations conv3 conv1 avgpool skip zero
    weights = [
        [0.1, 0.2, 0.1, 0.1, 0.5],  # zero is strongest: DARTS takes conv1
        [0.6, 0.1, 0.1, 0.1, 0.1],  # conv3, strong
        [0.1, 0.1, 0.1, 0.4, 0.3],  # skip, weaker
    ]
    assert derive(weights, net)["edges"] == [["conv1"], ["conv3", "skip"]]
    derived = derive(weights, net, inputs=1)
    assert derived["edges"] == [["conv1"], ["conv3", "zero"]]
    assert cell_model.validate(derived) == derived and encode(derived) == "cell:n2:c2:w8:r1:conv1|conv3,zero"
