"""kubetune.nas: every input kind builds and runs, skips project, bad blocks name their field."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kubetune import spec
from kubetune.architecture import ACTIVATIONS, BLOCK_FIELDS, MAX_FLAT_FEATURES, NORMS
from kubetune.nas import ArchitectureError, build_model, count_parameters, default_architecture

MIXED = {
    "blocks": [
        {"kind": "conv", "width": 8, "kernelSize": 5, "norm": "batch", "activation": "gelu"},
        {"kind": "conv", "width": 8, "kernelSize": 3, "skip": True, "norm": "layer", "dropout": 0.1},
        {"kind": "mlp", "width": 16, "activation": "silu", "norm": "layer"},
        {"kind": "mlp", "width": 16, "skip": True, "activation": "tanh", "norm": "batch"},
    ]
}
SHAPES = {"image": (3, 10, 12), "sequence": (2, 40), "tabular": (7,)}


def _modules(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_each_input_kind_builds_and_forwards(shape):
    model = build_model(MIXED, input_shape=shape, num_classes=5)
    assert model(torch.randn(4, *shape)).shape == (4, 5)


@pytest.mark.parametrize("shape, conv", [((1, 8, 8), nn.Conv2d), ((1, 40), nn.Conv1d)])
def test_input_shape_picks_the_convolution(shape, conv):
    model = build_model({"blocks": [{"kind": "conv", "width": 4}]}, input_shape=shape, num_classes=3)
    assert len(_modules(model, conv)) == 1


def test_conv_blocks_on_tabular_inputs_are_mlp_blocks():
    model = build_model({"blocks": [{"kind": "conv", "width": 4, "kernelSize": 5}]}, input_shape=(6,), num_classes=3)
    assert not _modules(model, nn.Conv1d) and not _modules(model, nn.Conv2d)
    assert [layer.in_features for layer in _modules(model, nn.Linear)] == [6, 4]


def test_conv_keeps_spatial_size_and_head_flattens_small_maps():
    model = build_model({"blocks": [{"kind": "conv", "width": 4, "kernelSize": 5}]}, input_shape=(1, 40), num_classes=3)
    assert model[-1].in_features == 4 * 40


def test_large_maps_are_pooled_before_the_head():
    model = build_model({"blocks": [{"kind": "conv", "width": 64}]}, input_shape=(3, 64, 64), num_classes=3)
    assert model[-1].in_features <= MAX_FLAT_FEATURES
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_skip_projects_when_widths_differ_and_is_identity_otherwise():
    arch = {"blocks": [{"kind": "conv", "width": 6, "skip": True}, {"kind": "conv", "width": 6, "skip": True}]}
    model = build_model(arch, input_shape=(2, 20), num_classes=3)
    assert isinstance(model[0].skip, nn.Conv1d) and model[0].skip.kernel_size == (1,)
    assert isinstance(model[1].skip, nn.Identity)


def test_skip_adds_the_input():
    model = build_model({"blocks": [{"kind": "mlp", "width": 3, "skip": True}]}, input_shape=(3,), num_classes=2)
    block = model[0]
    x = torch.randn(5, 3)
    torch.testing.assert_close(block(x), block.body(x) + x)


def test_kernel_size_is_ignored_for_mlp_blocks():
    with_kernel = build_model(
        {"blocks": [{"kind": "mlp", "width": 8, "kernelSize": 7}]}, input_shape=(1, 8, 8), num_classes=3
    )
    without = build_model({"blocks": [{"kind": "mlp", "width": 8}]}, input_shape=(1, 8, 8), num_classes=3)
    assert count_parameters(with_kernel) == count_parameters(without)
    for a, b in zip(with_kernel.state_dict().values(), without.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_seed_fixes_the_weights_without_touching_the_global_rng():
    arch = default_architecture((1, 40))
    state = torch.random.get_rng_state()
    a = build_model(arch, input_shape=(1, 40), num_classes=10, seed=1)
    b = build_model(arch, input_shape=(1, 40), num_classes=10, seed=1)
    c = build_model(arch, input_shape=(1, 40), num_classes=10, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a[0].body[0].weight, b[0].body[0].weight)
    assert not torch.equal(a[0].body[0].weight, c[0].body[0].weight)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_default_architecture_builds(shape):
    model = build_model(default_architecture(shape), input_shape=shape, num_classes=4)
    assert model(torch.randn(2, *shape)).shape == (2, 4)


def test_count_parameters():
    model = build_model({"blocks": [{"kind": "mlp", "width": 4}]}, input_shape=(3,), num_classes=2)
    assert count_parameters(model) == (3 * 4 + 4) + (4 * 2 + 2)


@pytest.mark.parametrize(
    "block, message",
    [
        ({"kind": "attention", "width": 8}, r"blocks\[1\]\.kind must be one of \['conv', 'mlp'\] but got 'attention'"),
        ({"kind": "mlp", "width": 0}, r"blocks\[1\]\.width must be a positive integer but got 0"),
        ({"kind": "mlp", "width": 8.5}, r"blocks\[1\]\.width must be a positive integer but got 8.5"),
        ({"kind": "conv", "width": 8, "kernelSize": 0}, r"blocks\[1\]\.kernelSize must be a positive integer"),
        ({"kind": "mlp", "width": 8, "activation": "swish"}, r"blocks\[1\]\.activation must be one of"),
        ({"kind": "mlp", "width": 8, "norm": "group"}, r"blocks\[1\]\.norm must be one of"),
        ({"kind": "mlp", "width": 8, "dropout": 1.0}, r"blocks\[1\]\.dropout must lie in \[0, 1\) but got 1.0"),
        ({"kind": "mlp", "width": 8, "skip": "yes"}, r"blocks\[1\]\.skip must be true or false but got 'yes'"),
        ({"kind": "mlp", "width": 8, "kernel_size": 3}, r"blocks\[1\] has unknown fields \['kernel_size'\]"),
        ({"kind": "mlp"}, r"blocks\[1\]\.width is required"),
    ],
)
def test_bad_block_names_the_field(block, message):
    arch = {"blocks": [{"kind": "mlp", "width": 4}, block]}
    with pytest.raises(ArchitectureError, match=message):
        build_model(arch, input_shape=(4,), num_classes=2)


def test_integral_float_width_is_accepted():
    model = build_model({"blocks": [{"kind": "mlp", "width": 8.0}]}, input_shape=(4,), num_classes=2)
    assert model[0].body[0].out_features == 8


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_activation_and_norm_the_spec_allows_builds(activation, norm):
    block = {"kind": "conv", "width": 4, "activation": activation, "norm": norm}
    model = build_model({"blocks": [block]}, input_shape=(1, 6), num_classes=2)
    assert type(model[0].body[-1]).__name__ == ACTIVATIONS[activation]


def test_the_spec_suggests_block_fields_in_the_builders_order():
    assert tuple(spec.BlockSpace().dimensions()) == BLOCK_FIELDS


# (kinds, widths, kernel sizes, input shape): the input has the widest block's channels or features, so
# the first block's inputs are within what spec.largest_network counts; the head is added below.
BOUNDED = [
    (["conv", "mlp"], [8, 64], [1, 5], (64, 8, 8)),
    (["conv", "mlp"], [4, 16], [3, 7], (16, 40)),
    (["conv"], [8, 32], [3], (32, 10, 12)),
    (["mlp"], [8, 48], [3], (48,)),
    (["conv", "mlp"], [8, 16], [5], (16,)),
]


@pytest.mark.parametrize("kinds, widths, kernels, shape", BOUNDED)
@pytest.mark.parametrize("norm, skip", [("batch", True), ("layer", True), ("none", False)])
def test_the_spec_parameter_bound_holds_for_every_network_of_the_space(kinds, widths, kernels, shape, norm, skip):
    """The spec refuses a space whose bound is too large, so the bound must not undercount any network."""
    import itertools

    space = spec.ArchitectureSpace.model_validate(
        {
            "blocks": {"low": 1, "high": 3},
            "block": {
                "kind": {"choices": kinds},
                "width": {"choices": widths},
                "kernelSize": {"choices": kernels},
                "norm": {"choices": [norm]},
                "skip": {"choices": [skip]},
            },
        }
    )
    bound = spec.largest_network(space)
    for layout in itertools.product(itertools.product(kinds, widths), repeat=3):
        blocks = [
            {"kind": kind, "width": width, "kernelSize": max(kernels), "norm": norm, "skip": skip}
            for kind, width in layout
        ]
        model = build_model({"blocks": blocks}, input_shape=shape, num_classes=7)
        head = model[-1]
        assert count_parameters(model) - (head.in_features + 1) * 7 <= bound, layout
