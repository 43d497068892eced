"""strategy.oneShot and sampler darts: their spec rules, the candidates and the round-robin ranking, the
parameters that enqueue a cell, and the DARTS sampler's reading of the derived cells."""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pytest

from kubetune import space
from kubetune.darts_sampler import SUPERNET_ATTR, DartsSampler
from kubetune.data import SplitData
from kubetune.encoding import decode, encode
from kubetune.one_shot import candidates, interleave
from kubetune.spec import SpecError, parse_experiment
from kubetune.supernet_step import darts_searches

CELL = {
    "type": "cell",
    "nodes": 2,
    "operations": {"choices": ["conv3", "skip", "zero"]},
    "cells": {"low": 1, "high": 2},
    "width": {"choices": [8, 16]},
    "reductions": 1,
}
DOCUMENT = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "one-shot"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy"},
        "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "architecture": CELL,
        "strategy": {"sampler": {"name": "tpe", "seed": 0}, "oneShot": {"topK": 3, "candidates": 5, "epochs": 1}},
        "budget": {"maxTrials": 4},
    },
}


def _parse(strategy=None, architecture=CELL, **budget):
    document = copy.deepcopy(DOCUMENT)
    if strategy is not None:
        document["spec"]["strategy"] = strategy
    document["spec"]["architecture"] = architecture
    document["spec"]["budget"].update(budget)
    return parse_experiment(document)


def test_a_one_shot_spec_parses_and_asks_for_the_supernet_step():
    experiment = _parse()
    assert experiment.spec.uses_supernet and experiment.spec.strategy.one_shot.top_k == 3
    assert not _parse({"sampler": {"name": "tpe"}}).spec.uses_supernet
    assert _parse({"sampler": {"name": "darts", "epochs": 2, "searches": 3}}).spec.uses_supernet


def test_warm_start_meta_is_short_for_its_defaults_and_needs_no_supernet():
    experiment = _parse({"sampler": {"name": "tpe"}, "warmStart": "meta"}, {"blocks": {"low": 1, "high": 2}})
    warm = experiment.spec.strategy.warm_start
    assert (warm.source, warm.trials, warm.candidates) == ("meta", 3, 500) and not experiment.spec.uses_supernet
    assert experiment.to_dict()["spec"]["strategy"]["warmStart"] == {"source": "meta", "trials": 3, "candidates": 500}


@pytest.mark.parametrize(
    "strategy, architecture, budget, field, words",
    [
        ({"oneShot": {}}, None, {}, "spec.strategy.oneShot", "needs architecture.type cell"),
        (
            {"sampler": {"name": "darts"}},
            {"blocks": {"low": 1, "high": 2}},
            {},
            "spec.strategy.sampler.name",
            "needs architecture.type cell",
        ),
        ({"sampler": {"name": "darts"}, "oneShot": {}}, CELL, {}, "spec.strategy.oneShot", "does not combine"),
        ({"oneShot": {"topK": 5}}, CELL, {"maxTrials": 4}, "spec.strategy.oneShot.topK", "must not exceed"),
        ({"sampler": {"name": "tpe", "epochs": 3}}, CELL, {}, "spec.strategy.sampler.epochs", "sampler darts only"),
        ({"sampler": {"name": "darts", "population": 3}}, CELL, {}, "population", "sampler evolution only"),
        ({"sampler": {"name": "darts"}, "warmStart": "meta"}, CELL, {}, "spec.strategy.warmStart", "does not combine"),
        ({"warmStart": {"trials": 5}}, CELL, {"maxTrials": 4}, "spec.strategy.warmStart.trials", "must not exceed"),
        ({"warmStart": "table"}, CELL, {}, "spec.strategy.warmStart.source", "should be 'meta'"),
    ],
)
def test_bad_supernet_settings_name_the_field_and_the_rule(strategy, architecture, budget, field, words):
    with pytest.raises(SpecError) as error:
        _parse(strategy, architecture, **budget)
    assert field in str(error.value) and words in str(error.value)


def test_a_small_frame_is_enumerated_and_a_large_one_drawn_without_repeats():
    cell_space = _parse().spec.architecture
    every = candidates(cell_space, 1, 8, count=100, seed=0)
    assert len(every) == 3**3 and len({encode(a) for a in every}) == 27
    assert all((a["cells"], a["width"]) == (1, 8) for a in every)
    drawn = candidates(cell_space, 2, 16, count=10, seed=0)
    assert len({encode(a) for a in drawn}) == 10 and all((a["cells"], a["width"]) == (2, 16) for a in drawn)
    assert drawn == candidates(cell_space, 2, 16, count=10, seed=0)
    assert drawn != candidates(cell_space, 2, 16, count=10, seed=1)


def test_the_top_k_go_round_robin_over_the_frames_rankings():
    a = [(0.9, "a1"), (0.8, "a2"), (0.7, "a3")]
    b = [(0.5, "b1"), (0.4, "b2")]
    c = [(0.95, "c1")]
    picked = interleave([a, b, c], 5)
    assert [architecture for _, _, architecture in picked] == ["c1", "a1", "b1", "a2", "b2"]
    assert [rank for rank, _, _ in picked] == [1, 1, 1, 2, 2]
    assert len(interleave([a, b, c], 99)) == 6


def test_an_enqueued_cell_is_the_architecture_the_trial_samples():
    experiment = _parse()
    cell_space = experiment.spec.architecture
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    wanted = candidates(cell_space, 2, 16, count=3, seed=4)
    for architecture in wanted:
        study.enqueue_trial(space.cell_params(architecture, cell_space))
    for architecture in wanted:
        trial = study.ask()
        hyperparameters, sampled = space.sample(trial, experiment.spec)
        assert sampled == architecture and "lr" in hyperparameters


def test_the_darts_sampler_trains_the_derived_cells_in_turn_and_names_their_search():
    experiment = _parse({"sampler": {"name": "darts", "seed": 0}})
    cell_space = experiment.spec.architecture
    derived = candidates(cell_space, 1, 8, count=2, seed=0)
    study = optuna.create_study(direction="maximize", sampler=DartsSampler(seed=0))
    study.set_user_attr(
        SUPERNET_ATTR,
        {
            "strategy": "darts",
            "cells": [
                {
                    "search": i,
                    "frame": "c1w8",
                    "seed": i,
                    "code": encode(cell),
                    "params": space.cell_params(cell, cell_space),
                }
                for i, cell in enumerate(derived)
            ],
        },
    )
    for number in range(4):
        trial = study.ask()
        _, architecture = space.sample(trial, experiment.spec)
        assert architecture == derived[number % 2]
        assert study.sampler.trial_attrs(number)["suggested_by"] == {
            "strategy": "darts",
            "search": number % 2,
            "frame": "c1w8",
            "seed": number % 2,
            "code": encode(derived[number % 2]),
        }
        assert 1e-3 <= trial.params["lr"] <= 1e-2  # hyperparameters are drawn, not DARTS's
    assert study.sampler.trial_attrs(99) == {}


def test_the_darts_sampler_without_derived_cells_points_at_the_supernet_step():
    experiment = _parse({"sampler": {"name": "darts", "seed": 0}})
    study = optuna.create_study(direction="maximize", sampler=DartsSampler(seed=0))
    with pytest.raises(RuntimeError, match="search-supernet step"):
        space.sample(study.ask(), experiment.spec)


def _synthetic_split(n: int = 64, length: int = 8) -> SplitData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * n, 1, length)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    return SplitData(x[:n], y[:n], x[n : 2 * n], y[n : 2 * n], x[2 * n :], y[2 * n :], 2, (1, length))


@pytest.mark.parametrize("operations", [["conv3", "skip", "zero"], ["conv3", "skip"]])
def test_darts_keeps_two_inputs_per_node_unless_the_space_has_no_zero(operations):
    architecture = {**CELL, "nodes": 3, "operations": {"choices": operations}, "width": {"choices": [4]}}
    experiment = _parse({"sampler": {"name": "darts", "seed": 0, "epochs": 1, "searches": 3}}, architecture)
    summary = darts_searches(experiment, _synthetic_split(), seed=5)
    assert [(c["search"], c["frame"], c["seed"]) for c in summary["cells"]] == [
        (0, "c1w4", 5),
        (1, "c2w4", 6),
        (2, "c1w4", 7),
    ]
    for cell in summary["cells"]:
        third = decode(cell["code"])["edges"][2]
        assert sum(op != "zero" for op in third) == (2 if "zero" in operations else 3)
        assert len(cell["weights"]) == 6 and all(abs(sum(row) - 1) < 1e-3 for row in cell["weights"])
        assert set(cell["params"]) <= {f"arch.cell.n{j}.in{i}" for j in (1, 2, 3) for i in range(j)} | {"arch.cells"}
