"""Copying a parent's tensors into a mutated child: whole, into a widened slice, or not at all."""

import torch
from torch import nn

from kubetune.inheritance import CopySummary, inherit_weights
from kubetune.nas import build_model

SHAPE = {"input_shape": (1, 40), "num_classes": 10}


def _conv_net(width: int, *, depth: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(depth):
        layers += [nn.Conv1d(channels, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 8, 4))


def _trained(model: nn.Module) -> nn.Module:
    """Parameters and batch-norm statistics that no initialisation produces."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(5.0, 6.0)
            else:
                tensor.fill_(7)
    return model


def test_equal_shapes_are_copied_whole_buffers_included():
    parent, child = _trained(_conv_net(4)), _conv_net(4)
    summary = inherit_weights(parent.state_dict(), child)
    assert summary == CopySummary(copied=len(parent.state_dict()), sliced=0, skipped=0)
    for name, tensor in parent.state_dict().items():
        assert torch.equal(child.state_dict()[name], tensor), name
    assert child[1].num_batches_tracked.item() == 7
    assert torch.equal(child[1].running_var, parent[1].running_var)


def test_a_widened_conv_and_linear_layer_get_the_parent_in_their_leading_slice():
    parent, child = _trained(_conv_net(4)), _conv_net(6)
    fresh = {name: tensor.clone() for name, tensor in child.state_dict().items()}
    summary = inherit_weights(parent.state_dict(), child)
    # conv weight and bias, the four batch-norm tensors and the linear weight grew; the counter and
    # the linear bias (4 classes either way) did not.
    assert summary == CopySummary(copied=2, sliced=7, skipped=0)
    conv = child[0].weight
    assert torch.equal(conv[:4], parent[0].weight) and torch.equal(conv[4:], fresh["0.weight"][4:])
    assert torch.equal(child[1].running_mean[:4], parent[1].running_mean)
    assert torch.equal(child[1].running_var[4:], torch.ones(2))  # the new channels keep batch norm's init
    linear = child[4].weight  # (4, 48) in the child, (4, 32) in the parent
    assert torch.equal(linear[:, :32], parent[4].weight)
    assert torch.equal(linear[:, 32:], fresh["4.weight"][:, 32:])
    assert torch.equal(child[4].bias, parent[4].bias)


def test_a_deeper_child_keeps_the_init_of_its_extra_layers():
    def blocks(depth: int) -> dict:
        return {"blocks": [{"kind": "conv", "width": 8, "kernelSize": 3, "norm": "batch"}] * depth}

    parent = _trained(build_model(blocks(1), **SHAPE, seed=0))
    child = build_model(blocks(2), **SHAPE, seed=1)
    fresh = {name: tensor.clone() for name, tensor in child.state_dict().items()}
    summary = inherit_weights(parent.state_dict(), child)
    first = [name for name in child.state_dict() if name.startswith("0.")]  # the block both have
    assert summary == CopySummary(copied=len(first), sliced=0, skipped=len(child.state_dict()) - len(first))
    for name, tensor in child.state_dict().items():
        expected = parent.state_dict()[name] if name in first else fresh[name]
        assert torch.equal(tensor, expected), name


def test_shrunk_or_reshaped_tensors_are_skipped_and_left_alone():
    parent = _trained(nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 3)))
    child = nn.Sequential(nn.Linear(8, 4), nn.Conv1d(4, 3, 1))  # fewer units; a conv weight has 3 dims
    fresh = {name: tensor.clone() for name, tensor in child.state_dict().items()}
    summary = inherit_weights(parent.state_dict(), child)
    assert summary == CopySummary(copied=1, sliced=0, skipped=3)  # only "1.bias" (3,) fits as it is
    for name in ("0.weight", "0.bias", "1.weight"):
        assert torch.equal(child.state_dict()[name], fresh[name]), name
    assert torch.equal(child[1].bias, parent[1].bias)


def test_a_mutated_kubetune_model_inherits_its_unchanged_blocks():
    def architecture(width: int, activation: str) -> dict:
        return {
            "blocks": [
                {"kind": "conv", "width": 8, "kernelSize": 3, "norm": "batch"},
                {"kind": "conv", "width": width, "kernelSize": 3, "norm": "batch", "activation": activation},
            ]
        }

    parent = _trained(build_model(architecture(8, "relu"), **SHAPE, seed=0))
    child = build_model(architecture(12, "gelu"), **SHAPE, seed=1)
    summary = inherit_weights(parent.state_dict(), child)
    assert summary.copied > 0 and summary.sliced > 0 and summary.skipped == 0
    # Flattening is channel-major, so the head's leading columns are the parent's eight channels.
    assert torch.equal(child[-1].weight[:, : 8 * 40], parent[-1].weight)
    assert child.eval()(torch.randn(3, 1, 40)).shape == (3, 10)


def test_a_cell_child_with_one_edge_changed_inherits_every_other_tensor():
    def cell(second_edge: str) -> dict:
        edges = [["conv3"], ["skip", second_edge]]
        return {"type": "cell", "nodes": 2, "edges": edges, "cells": 2, "width": 8, "reductions": 1}

    parent = _trained(build_model(cell("conv3"), **SHAPE, seed=0))
    child = build_model(cell("conv1"), **SHAPE, seed=1)
    fresh = {name: tensor.clone() for name, tensor in child.state_dict().items()}
    summary = inherit_weights(parent.state_dict(), child)
    assert summary.copied > 0 and summary.sliced == 0
    for name, tensor in child.state_dict().items():
        before = parent.state_dict()[name]
        if before.shape == tensor.shape:
            assert torch.equal(tensor, before), name
        else:  # the changed edge's 1-wide kernel: the parent's 3-wide one does not fit in it
            assert torch.equal(tensor, fresh[name]), name
    changed = sum(parent.state_dict()[name].shape != tensor.shape for name, tensor in child.state_dict().items())
    assert summary.skipped == changed > 0
