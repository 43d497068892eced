"""The cell architecture space: its spec rules, its Optuna parameters, its grid count and its networks."""

from __future__ import annotations

import copy
import itertools

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from repo_paths import EXAMPLES
from torch import nn

from kubetune import spec
from kubetune.architecture import CELL_OPERATIONS, FLAT_OPERATIONS, cell_edges, reduction_cells
from kubetune.nas import ArchitectureError, build_model, count_parameters
from kubetune.samplers import make_sampler
from kubetune.space import sample
from kubetune.spec import SpecError, grid_points, grid_space, load_experiment, parse_experiment
from kubetune.study import tell_once

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SHAPES = {"image": (3, 10, 12), "sequence": (2, 40), "tabular": (7,)}


def _document(minimal_spec: dict, cell: dict | None = None, **spec_changes) -> dict:
    document = copy.deepcopy(minimal_spec)
    document["spec"]["architecture"] = {"type": "cell", **(cell or {})}
    document["spec"].update(copy.deepcopy(spec_changes))
    return document


def _cell(nodes: int = 2, operation: str = "conv3", cells: int = 2, width: int = 8, reductions: int = 1) -> dict:
    edges = [[operation] * node for node in range(1, nodes + 1)]
    return {"type": "cell", "nodes": nodes, "edges": edges, "cells": cells, "width": width, "reductions": reductions}


# ---------------------------------------------------------------------------------------------------- the spec

REJECTED = [
    ("nodes-zero", {"nodes": 0}, ["spec.architecture.nodes", "greater than or equal to 1"]),
    ("nodes-too-many", {"nodes": 9}, ["spec.architecture.nodes", "less than or equal to 8"]),
    (
        "operation-unknown",
        {"operations": {"choices": ["conv3", "conv5"]}},
        ["spec.architecture.operations", "conv3", "['conv5']"],
    ),
    ("operations-empty", {"operations": {"choices": []}}, ["spec.architecture.operations.choices", "at least 1"]),
    (
        "operations-repeated",
        {"operations": {"choices": ["skip", "skip"]}},
        ["spec.architecture.operations", "unique", "['skip', 'skip']"],
    ),
    ("width-zero", {"width": {"choices": [16, 0]}}, ["spec.architecture.width", "integers from 1 to 4096", "[0]"]),
    ("width-text", {"width": {"choices": ["wide"]}}, ["spec.architecture.width", "['wide']"]),
    ("width-bool", {"width": {"choices": [True]}}, ["spec.architecture.width", "[True]"]),
    ("width-repeated", {"width": {"choices": [8, 8]}}, ["spec.architecture.width", "unique"]),
    ("cells-inverted", {"cells": {"low": 3, "high": 2}}, ["spec.architecture.cells", "low=3, high=2"]),
    ("cells-zero", {"cells": {"low": 0, "high": 2}}, ["spec.architecture.cells.low", "greater than or equal to 1"]),
    ("reductions-negative", {"reductions": -1}, ["spec.architecture.reductions", "greater than or equal to 0"]),
    (
        "reductions-past-cells",
        {"cells": {"low": 1, "high": 3}, "reductions": 2},
        ["spec.architecture.reductions", "cells.low (1)", "but got 2"],
    ),
    ("macro-field", {"blocks": {"low": 1, "high": 2}}, ["spec.architecture.blocks", "unknown field"]),
    (
        "too-many-parameters",
        {"nodes": 8, "width": {"choices": [16, 2048]}, "cells": {"low": 2, "high": 8}, "reductions": 2},
        [
            "spec.architecture:",
            f"about {8 * (36 * 8192 * (9 * 8192 + 3) + 8192 * 8195):,} parameters",
            "8 cells of 8 nodes, width 2048 doubled 2 times",
            "lower width, nodes, cells.high or reductions",
        ],
    ),
]


@pytest.mark.parametrize("cell, expected", [pytest.param(c, e, id=i) for i, c, e in REJECTED])
def test_cell_rule_rejects_with_field_path_and_value(minimal_spec, cell, expected):
    with pytest.raises(SpecError) as caught:
        parse_experiment(_document(minimal_spec, cell))
    message = str(caught.value)
    for text in expected:
        assert text in message, f"{text!r} missing from:\n{message}"


def test_an_unknown_architecture_type_is_named(minimal_spec):
    with pytest.raises(SpecError, match=r"spec.architecture.type: must be 'macro' or 'cell' but got 'dag'"):
        parse_experiment(_document(minimal_spec, {"type": "dag"}))


def test_a_macro_field_in_a_cell_space_and_back(minimal_spec):
    document = copy.deepcopy(minimal_spec)
    document["spec"]["architecture"] = {"nodes": 3}  # no type: a macro space, which has no nodes
    with pytest.raises(SpecError, match=r"spec.architecture.nodes: unknown field"):
        parse_experiment(document)


def test_defaults_and_round_trip(minimal_spec):
    experiment = parse_experiment(_document(minimal_spec))
    space = experiment.spec.architecture
    assert isinstance(space, spec.CellSpace)
    assert (space.nodes, space.operations.choices, space.reductions) == (
        4,
        ["conv3", "conv1", "avgpool", "skip", "zero"],
        1,
    )
    assert experiment.to_dict()["spec"]["architecture"]["type"] == "cell"
    assert parse_experiment(experiment.to_dict()) == experiment


def test_a_macro_space_reads_as_before(digits_spec):
    without_type = copy.deepcopy(digits_spec)
    del without_type["spec"]["architecture"]["type"]
    assert parse_experiment(without_type) == parse_experiment(digits_spec)
    assert isinstance(parse_experiment(digits_spec).spec.architecture, spec.ArchitectureSpace)


def test_a_large_cell_space_within_the_bound_loads(minimal_spec):
    cell = {"nodes": 4, "width": {"choices": [64]}, "cells": {"low": 2, "high": 8}, "reductions": 2}
    space = parse_experiment(_document(minimal_spec, cell)).spec.architecture
    assert spec.largest_network(space) == 8 * (10 * 256 * (9 * 256 + 3) + 256 * 259)


# --------------------------------------------------------------------------------------------------- the grid

SMALL = {"nodes": 2, "operations": {"choices": ["conv1", "skip", "zero"]}, "cells": {"low": 1, "high": 2}}


def test_grid_space_and_points_of_a_cell_space(minimal_spec):
    experiment = parse_experiment(_document(minimal_spec, SMALL, strategy={"sampler": {"name": "grid"}}))
    values = grid_space(experiment.spec)
    assert values == {"arch.cells": [1, 2], "arch.width": [16, 32], "arch.cell.operations": ["conv1", "skip", "zero"]}
    assert grid_points(experiment.spec) == 2 * 2 * 3**3


def test_the_grid_sampler_tries_every_cell_once(minimal_spec):
    cell = {**SMALL, "width": {"choices": [8]}, "cells": {"low": 1, "high": 1}}
    experiment = parse_experiment(_document(minimal_spec, cell, strategy={"sampler": {"name": "grid", "seed": 0}}))
    size = grid_points(experiment.spec)
    assert size == 27
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    tried = set()
    for value in range(size):
        trial = study.ask()
        _, architecture = sample(trial, experiment.spec)
        tried.add(str(architecture["edges"]))
        assert tell_once(study, trial.number, state=TrialState.COMPLETE, values=[value])
    assert len(tried) == size


def test_a_cell_grid_too_large_is_refused(minimal_spec):
    with pytest.raises(SpecError, match=r"strategy.sampler.name: grid over this space has 58,593,750 points"):
        parse_experiment(_document(minimal_spec, {}, strategy={"sampler": {"name": "grid"}}))


# ---------------------------------------------------------------------------------------------- the sampling


def test_every_edge_is_one_categorical_parameter_and_nothing_is_conditional(minimal_spec):
    experiment = parse_experiment(_document(minimal_spec, {"nodes": 3, "cells": {"low": 1, "high": 3}}))
    study = optuna.create_study(storage=InMemoryStorage(), sampler=optuna.samplers.RandomSampler(seed=0))
    names = {f"arch.cell.n{node}.in{source}" for node, source in cell_edges(3)}
    seen = set()
    for _ in range(30):
        trial = study.ask()
        _, architecture = sample(trial, experiment.spec)
        assert set(trial.params) == names | {"arch.cells", "arch.width"}  # the same names every time
        for name in names:
            distribution = trial.distributions[name]
            assert isinstance(distribution, CategoricalDistribution)
            assert list(distribution.choices) == ["conv3", "conv1", "avgpool", "skip", "zero"]
        assert architecture["edges"] == [[trial.params[f"arch.cell.n{j}.in{i}"] for i in range(j)] for j in (1, 2, 3)]
        assert (architecture["cells"], architecture["width"]) == (
            trial.params["arch.cells"],
            trial.params["arch.width"],
        )
        assert (architecture["type"], architecture["nodes"], architecture["reductions"]) == ("cell", 3, 1)
        seen.update(op for ops in architecture["edges"] for op in ops)
        study.tell(trial, 0.0)
    assert seen == {"conv3", "conv1", "avgpool", "skip", "zero"}


def test_fixed_cell_dimensions_are_constants(minimal_spec):
    cell = {"nodes": 1, "operations": {"choices": ["skip"]}, "cells": {"low": 2, "high": 2}, "width": {"choices": [8]}}
    experiment = parse_experiment(_document(minimal_spec, cell))
    trial = optuna.create_study(storage=InMemoryStorage()).ask()
    _, architecture = sample(trial, experiment.spec)
    assert trial.params == {}
    assert architecture == {"type": "cell", "nodes": 1, "edges": [["skip"]], "cells": 2, "width": 8, "reductions": 1}


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "gp"])
def test_every_sampler_samples_the_cell_space(minimal_spec, sampler):
    experiment = parse_experiment(_document(minimal_spec, SMALL, strategy={"sampler": {"name": sampler}}))
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    for value in range(6):
        trial = study.ask()
        _, architecture = sample(trial, experiment.spec)
        build_model(architecture, input_shape=(1, 12), num_classes=3)
        study.tell(trial, float(value))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6


# --------------------------------------------------------------------------------------------- the networks


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("operation", CELL_OPERATIONS)
def test_every_operation_builds_and_forwards_on_every_input_kind(shape, operation):
    model = build_model(_cell(3, operation, cells=3, reductions=2), input_shape=shape, num_classes=5)
    output = model(torch.randn(4, *shape))
    assert output.shape == (4, 5) and torch.isfinite(output).all()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_cell_of_zero_edges_outputs_zeros(shape):
    model = build_model(_cell(2, "zero"), input_shape=shape, num_classes=3)
    cells = [m for m in model.modules() if type(m).__name__ == "Cell"]
    assert cells and all(len(cell.operations) == 0 for cell in cells)
    x = model[0](torch.randn(4, *shape))
    assert torch.equal(cells[0](x), torch.zeros_like(x))
    assert torch.isfinite(model(torch.randn(4, *shape))).all()


def test_a_node_sums_its_edges_and_the_cell_averages_its_nodes():
    model = build_model(_cell(2, "skip", cells=1, reductions=0), input_shape=(5,), num_classes=2)
    cell = model[1]
    x = torch.randn(3, 8)
    # node 1 = x, node 2 = x + node 1 = 2x; the output is their mean
    torch.testing.assert_close(cell(x), (x + 2 * x) / 2)


@pytest.mark.parametrize("shape, reduced", [((2, 40), (20,)), ((3, 10, 12), (5, 6)), ((2, 5), (3,))])
def test_a_reduction_halves_the_spatial_size_and_doubles_the_width(shape, reduced):
    model = build_model(_cell(1, "conv3", cells=2, reductions=1, width=8), input_shape=shape, num_classes=3)
    x = model[0](torch.randn(2, *shape))
    for layer in model[1:]:
        if isinstance(layer, nn.Flatten | nn.Linear):
            break
        x = layer(x)
    assert tuple(x.shape[1:]) == (16, *reduced)


def test_tabular_inputs_read_operations_as_flat_ones():
    assert set(FLAT_OPERATIONS) == set(CELL_OPERATIONS)
    convs = build_model(_cell(2, "conv3", reductions=1), input_shape=(7,), num_classes=3)
    linears = build_model(_cell(2, "linear", reductions=1), input_shape=(7,), num_classes=3)
    assert count_parameters(convs) == count_parameters(linears)
    assert not [m for m in convs.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert len([m for m in convs.modules() if isinstance(m, nn.Linear)]) == 1 + 2 * 3 + 1  # stem, edges, head


def test_an_operation_is_named_after_its_edge_whatever_the_other_edges_are():
    zero_first = build_model({**_cell(2), "edges": [["zero"], ["conv3", "conv3"]]}, input_shape=(1, 20), num_classes=3)
    conv_first = build_model(_cell(2), input_shape=(1, 20), num_classes=3)
    names = set(zero_first.state_dict())
    assert "1.operations.n2_in1.1.weight" in names and not any("n1_in0" in name for name in names)
    assert names < set(conv_first.state_dict())


def test_the_same_seed_builds_the_same_weights():
    first, again, other = (build_model(_cell(), input_shape=(1, 20), num_classes=3, seed=s) for s in (1, 1, 2))
    state, same, different = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state)


BOUNDED = [
    (["conv3", "skip"], [8, 32], (1, 40)),
    (["conv1", "avgpool", "zero"], [4, 16], (3, 12, 12)),
    (["linear", "skip"], [8, 24], (10,)),
    (["skip", "zero"], [8], (2, 9)),
]


@pytest.mark.parametrize("operations, widths, shape", BOUNDED)
def test_the_spec_parameter_bound_holds_for_every_network_of_the_space(operations, widths, shape):
    """Past the stem and the head (which depend on the data), no network of the space exceeds the bound."""
    space = spec.CellSpace.model_validate(
        {
            "type": "cell",
            "nodes": 2,
            "operations": {"choices": operations},
            "cells": {"low": 2, "high": 3},
            "width": {"choices": widths},
            "reductions": 2,
        }
    )
    bound = spec.largest_network(space)
    for edges in itertools.product(operations, repeat=3):
        for cells, width in itertools.product((2, 3), widths):
            architecture = {**_cell(2, cells=cells, width=width, reductions=2), "edges": [[edges[0]], list(edges[1:])]}
            model = build_model(architecture, input_shape=shape, num_classes=7)
            outside = count_parameters(model[0]) + count_parameters(model[-1])
            assert count_parameters(model) - outside <= bound, (edges, cells, width)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nodes": 0}, "nodes must be a positive integer but got 0"),
        ({"edges": [["conv3"]]}, "edges must be 2 lists, the j-th holding j operations"),
        ({"edges": [["conv3"], ["skip", "conv9"]]}, "edges[1][1] must be one of"),
        ({"reductions": 3}, "reductions must be at most cells (2) but got 3"),
        ({"width": 1.5}, "width must be a positive integer but got 1.5"),
        ({"depth": 2}, "unknown fields ['depth']"),
    ],
)
def test_a_bad_cell_architecture_names_its_field(change, message):
    with pytest.raises(ArchitectureError) as caught:
        build_model({**_cell(), **change}, input_shape=(1, 8), num_classes=3)
    assert message in str(caught.value)


def test_integral_floats_are_accepted_as_kfp_hands_them_over():
    architecture = {**_cell(), "cells": 2.0, "width": 8.0, "nodes": 2.0, "reductions": 1.0}
    assert build_model(architecture, input_shape=(1, 8), num_classes=3)(torch.zeros(2, 1, 8)).shape == (2, 3)


def test_reduction_cells_are_evenly_spaced_and_distinct():
    assert reduction_cells(3, 1) == [1] and reduction_cells(3, 2) == [1, 2] and reduction_cells(6, 2) == [2, 4]
    for cells in range(1, 10):
        for reductions in range(cells + 1):
            chosen = reduction_cells(cells, reductions)
            assert len(set(chosen)) == reductions and all(0 <= c < cells for c in chosen)


# ---------------------------------------------------------------------------------------------- the example


def test_the_cell_example_loads_and_is_the_packaged_file():
    path = EXAMPLES / "mnist1d-cell.yaml"
    experiment = load_experiment(path)
    assert isinstance(experiment.spec.architecture, spec.CellSpace)
    assert path.resolve().read_bytes() == (EXAMPLES.parent / "kubetune" / "examples" / "mnist1d-cell.yaml").read_bytes()


def test_every_example_is_the_packaged_copy():
    """examples/ links into kubetune/examples, which the wheel ships: they must not drift apart."""
    packaged = EXAMPLES.parent / "kubetune" / "examples"
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(p.name for p in packaged.glob("*.yaml"))
    for path in EXAMPLES.glob("*.yaml"):
        assert path.read_bytes() == (packaged / path.name).read_bytes(), path.name
