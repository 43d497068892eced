"""kubetune.encoding: one canonical string and one fixed-length vector per architecture, in both spaces."""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.storages import InMemoryStorage

from kubetune.encoding import decode, encode, flatten, vector
from kubetune.nas import build_model, count_parameters
from kubetune.space import sample
from kubetune.spec import parse_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

CELL = {"type": "cell", "nodes": 2, "edges": [["conv3"], ["skip", "zero"]], "cells": 3, "width": 16, "reductions": 1}
MACRO = {
    "blocks": [
        {"kind": "conv", "width": 16, "kernelSize": 5, "norm": "batch", "skip": True},
        {"kind": "mlp", "width": 32, "dropout": 0.25, "activation": "gelu"},
    ]
}


def _spaces(digits_spec: dict) -> dict:
    cell = copy.deepcopy(digits_spec)
    cell["spec"]["architecture"] = {"type": "cell", "nodes": 3, "cells": {"low": 1, "high": 3}}
    return {"macro": parse_experiment(digits_spec).spec, "cell": parse_experiment(cell).spec}


def _samples(spec, count: int = 25) -> list[dict]:
    study = optuna.create_study(storage=InMemoryStorage(), sampler=optuna.samplers.RandomSampler(seed=0))
    architectures = []
    for _ in range(count):
        trial = study.ask()
        architectures.append(sample(trial, spec)[1])
        study.tell(trial, 0.0)
    return architectures


def test_the_strings_read_as_documented():
    assert encode(CELL) == "cell:n2:c3:w16:r1:conv3|skip,zero"
    assert encode(MACRO) == "macro:conv-w16-k5-relu-batch-d0-skip|mlp-w32-gelu-none-d0.25-noskip"


def test_equal_architectures_share_a_string_however_written():
    # KFP hands ints over as floats; key order and defaults written out do not matter
    assert encode({**CELL, "cells": 3.0, "width": 16.0}) == encode(dict(reversed(list(CELL.items()))))
    spelled_out = {"blocks": [{**MACRO["blocks"][0], "activation": "relu", "dropout": 0.0}, MACRO["blocks"][1]]}
    assert encode(spelled_out) == encode(MACRO)
    # an MLP block's kernel size builds nothing, so it is not part of the code
    assert encode({"blocks": [{"kind": "mlp", "width": 8, "kernelSize": 7}]}) == encode(
        {"blocks": [{"kind": "mlp", "width": 8}]}
    )


@pytest.mark.parametrize(
    "other",
    [
        {**CELL, "edges": [["conv3"], ["zero", "skip"]]},
        {**CELL, "cells": 2},
        {**CELL, "width": 32},
        {**CELL, "reductions": 0},
        {"blocks": [MACRO["blocks"][0]]},
        {"blocks": [{**MACRO["blocks"][0], "kernelSize": 3}, MACRO["blocks"][1]]},
    ],
)
def test_different_architectures_get_different_strings(other):
    assert encode(other) not in (encode(CELL), encode(MACRO))


@pytest.mark.parametrize("space", ["macro", "cell"])
def test_decode_gives_back_a_network_with_the_same_code_and_size(digits_spec, space):
    for architecture in _samples(_spaces(digits_spec)[space], 10):
        again = decode(encode(architecture))
        assert encode(again) == encode(architecture)
        sizes = [count_parameters(build_model(a, input_shape=(1, 8, 8), num_classes=10)) for a in (architecture, again)]
        assert sizes[0] == sizes[1]


def test_decode_refuses_what_is_no_code():
    with pytest.raises(ValueError, match="starts with cell: or macro:"):
        decode("dag:n1")


@pytest.mark.parametrize("space", ["macro", "cell"])
def test_the_vector_has_one_length_per_space_and_tells_architectures_apart(digits_spec, space):
    spec = _spaces(digits_spec)[space]
    architectures = _samples(spec)
    vectors = [vector(a, spec.architecture) for a in architectures]
    assert len({len(v) for v in vectors}) == 1
    assert all(0.0 <= x <= 1.0 for v in vectors for x in v)
    codes = [encode(a) for a in architectures]
    assert len({tuple(v) for v in vectors}) == len(set(codes))


def test_the_cell_vector_is_one_hot_per_edge(digits_spec):
    spec = _spaces(digits_spec)["cell"]
    architecture = {**CELL, "nodes": 3, "edges": [["conv3"], ["skip", "zero"], ["avgpool", "conv1", "skip"]]}
    numbers = vector(architecture, spec.architecture)
    operations = spec.architecture.operations.choices
    assert len(numbers) == 1 + 2 + 6 * len(operations)
    assert numbers[:3] == [1.0, 1.0, 0.0]  # 3 cells of 1-3 scaled to 1; width 16 of [16, 32]
    edges = [numbers[3 + i * len(operations) : 3 + (i + 1) * len(operations)] for i in range(6)]
    assert [operations[e.index(1.0)] for e in edges] == ["conv3", "skip", "zero", "avgpool", "conv1", "skip"]


def test_the_macro_vector_pads_missing_blocks_with_zeros(digits_spec):
    spec = _spaces(digits_spec)["macro"]
    one = vector({"blocks": [MACRO["blocks"][0] | {"kernelSize": 3, "width": 32, "dropout": 0.1}]}, spec.architecture)
    slot = (len(one) - 1) // spec.architecture.blocks.high
    assert one[0] == 0.0 and one[1] == 1.0  # 1 block of 1-3; the first slot is present
    assert one[1 + slot :] == [0.0] * (2 * slot)


def test_a_value_outside_the_space_has_no_vector(digits_spec):
    spec = _spaces(digits_spec)["cell"]
    with pytest.raises(ValueError, match=r"width is 64, not one of the space's choices \[16, 32\]"):
        vector({**CELL, "width": 64}, spec.architecture)
    with pytest.raises(ValueError, match="no vector in a cell space"):
        vector(MACRO, spec.architecture)


def test_flatten_names_the_trials_parameters(digits_spec):
    flat = flatten({**CELL, "nodes": 2})
    assert flat == {
        "arch.nodes": 2,
        "arch.cells": 3,
        "arch.width": 16,
        "arch.reductions": 1,
        "arch.cell.n1.in0": "conv3",
        "arch.cell.n2.in0": "skip",
        "arch.cell.n2.in1": "zero",
        "arch.code": encode(CELL),
    }
    macro = flatten(MACRO)
    assert macro["arch.blocks"] == 2 and macro["arch.b1.kind"] == "mlp" and macro["arch.code"] == encode(MACRO)
