"""kubetune.space: suggestions follow the spec (conditions, conv-only kernels, fixed dims), the grid is exact."""

from __future__ import annotations

import copy
import itertools
import warnings

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from kubetune.hyperparameters import HYPERPARAMETERS
from kubetune.samplers import make_sampler
from kubetune.space import sample, trainer_hyperparameters
from kubetune.spec import grid_points, grid_space, parse_experiment
from kubetune.study import tell_once

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(storage=InMemoryStorage(), sampler=optuna.samplers.RandomSampler(seed=seed))


def _with(document: dict, **spec_changes) -> dict:
    document = copy.deepcopy(document)
    document["spec"].update(copy.deepcopy(spec_changes))
    return document


@pytest.fixture
def digits(digits_spec):
    return parse_experiment(digits_spec)


def test_digits_samples_follow_the_spec(digits):
    spec = digits.spec
    study = _study()
    seen_optimizers, seen_kinds, seen_counts = set(), set(), set()
    for _ in range(80):
        trial = study.ask()
        chosen, architecture = sample(trial, spec)
        params = trial.params

        # hyperparameters: the conditional momentum exists only with sgd
        assert chosen["optimizer"] in ("adam", "adamw", "sgd")
        assert ("momentum" in chosen) == (chosen["optimizer"] == "sgd")
        assert ("momentum" in params) == (chosen["optimizer"] == "sgd")
        if "momentum" in chosen:
            assert 0.5 <= chosen["momentum"] <= 0.99
        assert 1e-4 <= chosen["lr"] <= 3e-2 and chosen["batchSize"] in (32, 64, 128)
        assert set(chosen) <= set(params)

        # architecture: 1-3 blocks; kernelSize only on conv blocks
        blocks = architecture["blocks"]
        assert 1 <= len(blocks) <= 3 and params["arch.blocks"] == len(blocks)
        for index, block in enumerate(blocks):
            conv = block["kind"] == "conv"
            assert ("kernelSize" in block) == conv
            assert (f"arch.b{index}.kernelSize" in params) == conv
            if conv:
                assert block["kernelSize"] in (3, 5)
            assert block["width"] in (16, 32, 64) and block["activation"] in ("relu", "gelu")
            assert block["norm"] in ("none", "batch") and block["skip"] in (True, False)
            assert 0.0 <= block["dropout"] <= 0.3
            assert params[f"arch.b{index}.width"] == block["width"]
            seen_kinds.add(block["kind"])
        # no block past the chosen count is suggested
        assert not any(name.startswith(f"arch.b{len(blocks)}.") for name in params)

        seen_optimizers.add(chosen["optimizer"])
        seen_counts.add(len(blocks))
        study.tell(trial, 0.5)
    # the loop really exercised both sides of every condition
    assert seen_optimizers == {"adam", "adamw", "sgd"}
    assert seen_kinds == {"conv", "mlp"}
    assert seen_counts == {1, 2, 3}


def test_tpe_samples_the_conditional_space(digits):
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(digits), direction="maximize")
    for _ in range(15):
        trial = study.ask()
        chosen, _architecture = sample(trial, digits.spec)
        assert ("momentum" in chosen) == (chosen["optimizer"] == "sgd")
        study.tell(trial, chosen["lr"])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 15


def test_fixed_dimensions_are_not_suggested(minimal_spec):
    document = _with(
        minimal_spec,
        parameters={
            "optimizer": {"type": "categorical", "choices": ["adam"]},
            "lr": {"type": "float", "low": 0.01, "high": 0.1},
        },
        architecture={
            "blocks": {"low": 2, "high": 2},
            "block": {"width": {"choices": [16]}, "activation": {"choices": ["gelu", "relu"]}},
        },
    )
    spec = parse_experiment(document).spec
    trial = _study().ask()
    chosen, architecture = sample(trial, spec)
    # a one-choice categorical *parameter* is still a parameter (the user named it)
    assert chosen["optimizer"] == "adam" and "optimizer" in trial.params
    # fixed architecture dimensions and a fixed block count are constants, not Optuna params
    assert set(trial.params) == {"optimizer", "lr", "arch.b0.activation", "arch.b1.activation"}
    assert [b["width"] for b in architecture["blocks"]] == [16, 16]
    assert all(
        b["kind"] == "conv"
        and b["kernelSize"] == 3
        and b["dropout"] == 0.0
        and b["skip"] is False
        and b["norm"] == "none"
        for b in architecture["blocks"]
    )


def test_no_architecture_space(minimal_spec):
    document = _with(minimal_spec, parameters={"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}})
    trial = _study().ask()
    chosen, architecture = sample(trial, parse_experiment(document).spec)
    assert architecture is None
    assert set(chosen) == {"lr"} and 0.001 <= chosen["lr"] <= 0.1


def test_int_and_stepped_parameters(minimal_spec):
    document = _with(
        minimal_spec,
        parameters={
            "batchSize": {"type": "int", "low": 16, "high": 64, "step": 16},
            "weightDecay": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
        },
    )
    spec = parse_experiment(document).spec
    study = _study()
    for _ in range(20):
        trial = study.ask()
        chosen, _ = sample(trial, spec)
        assert chosen["batchSize"] in (16, 32, 48, 64) and isinstance(chosen["batchSize"], int)
        assert chosen["weightDecay"] in (0.0, 0.25, 0.5)
        study.tell(trial, 0.0)


def test_trainer_hyperparameters_defaults(minimal_spec):
    spec = parse_experiment(minimal_spec).spec
    assert trainer_hyperparameters(spec, {}) == HYPERPARAMETERS


def test_trainer_hyperparameters_trial_batch_size_and_override(minimal_spec):
    spec = parse_experiment(_with(minimal_spec, trial={"batchSize": 256})).spec
    merged = trainer_hyperparameters(spec, {"lr": 0.05})
    assert merged["batchSize"] == 256 and merged["lr"] == 0.05
    assert merged["optimizer"] == HYPERPARAMETERS["optimizer"] and merged["momentum"] == HYPERPARAMETERS["momentum"]
    # a sampled batchSize beats the fixed trial.batchSize
    assert trainer_hyperparameters(spec, {"batchSize": 32})["batchSize"] == 32
    assert HYPERPARAMETERS["batchSize"] == 64  # the defaults themselves are untouched


GRID_PARAMETERS = {
    "lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "batchSize": {"type": "int", "low": 16, "high": 64, "step": 16},
}


def test_grid_space_values(minimal_spec):
    document = _with(
        minimal_spec,
        parameters=GRID_PARAMETERS,
        strategy={"sampler": {"name": "grid"}},
        architecture={
            "blocks": {"low": 1, "high": 2},
            "block": {
                "kind": {"choices": ["mlp"]},
                "width": {"choices": [8, 16]},
                "dropout": {"low": 0.0, "high": 0.2, "step": 0.1},
            },
        },
    )
    grid = grid_space(parse_experiment(document).spec)
    assert {
        name: grid[name]
        for name in ("lr", "optimizer", "batchSize", "arch.blocks", "arch.block.width", "arch.block.dropout")
    } == {
        "lr": [0.1, 0.2, 0.3],  # exact: no 0.30000000000000004 past high
        "optimizer": ["adam", "sgd"],
        "batchSize": [16, 32, 48, 64],
        "arch.blocks": [1, 2],
        "arch.block.width": [8, 16],
        "arch.block.dropout": [0.0, 0.1, 0.2],
    }
    assert all(isinstance(v, int) for v in grid["batchSize"])


def test_grid_space_step_not_dividing_the_range(minimal_spec):
    document = _with(
        minimal_spec,
        parameters={
            "weightDecay": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.2},
            "batchSize": {"type": "int", "low": 10, "high": 20, "step": 4},
        },
    )
    grid = grid_space(parse_experiment(document).spec)
    assert grid == {"weightDecay": [0.0, 0.2, 0.4], "batchSize": [10, 14, 18]}


def test_grid_space_without_architecture(minimal_spec):
    document = _with(minimal_spec, parameters={"optimizer": {"type": "categorical", "choices": ["sgd"]}})
    assert grid_space(parse_experiment(document).spec) == {"optimizer": ["sgd"]}


# Conditional everywhere: momentum only for sgd, a kernel size only for conv blocks, 1 or 2 blocks.
# 3 hyperparameter settings x (3 one-block + 9 two-block architectures) = 36 distinct configurations.
CONDITIONAL = {
    "parameters": {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.5, "high": 0.9, "step": 0.4, "when": {"optimizer": ["sgd"]}},
    },
    "architecture": {
        "blocks": {"low": 1, "high": 2},
        "block": {"kind": {"choices": ["conv", "mlp"]}, "width": {"choices": [8]}, "kernelSize": {"choices": [3, 5]}},
    },
}


def _grid_run(experiment, trials: int) -> list[tuple]:
    """Ask and tell ``trials`` grid trials in turn; the configurations they tried."""
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    tried = []
    for _ in range(trials):
        trial = study.ask()
        chosen, architecture = sample(trial, experiment.spec)
        tried.append((tuple(sorted(chosen.items())), tuple(tuple(sorted(b.items())) for b in architecture["blocks"])))
        # the covering tell makes the sampler call study.stop(), which must not break tell_once
        assert tell_once(study, trial.number, state=TrialState.COMPLETE, values=[len(tried)])
    return tried


def test_grid_counts_and_tries_only_real_configurations(minimal_spec):
    experiment = parse_experiment(_with(minimal_spec, strategy={"sampler": {"name": "grid", "seed": 1}}, **CONDITIONAL))
    assert grid_points(experiment.spec) == 36  # the hand-made product listed 128 grid points
    tried = _grid_run(experiment, 36)
    assert len(set(tried)) == 36, "a grid trial repeated a configuration"
    assert all(("momentum" in dict(hp)) == (dict(hp)["optimizer"] == "sgd") for hp, _ in tried)
    assert all(("kernelSize" in dict(b)) == (dict(b)["kind"] == "conv") for _, blocks in tried for b in blocks)


def test_grid_sampler_covers_the_grid_exactly_once(minimal_spec):
    document = _with(
        minimal_spec,
        parameters=GRID_PARAMETERS,
        strategy={"sampler": {"name": "grid", "seed": 1}},
        architecture={
            "blocks": {"low": 1, "high": 1},
            "block": {"width": {"choices": [8, 16]}, "dropout": {"low": 0.0, "high": 0.1, "step": 0.1}},
        },
    )
    experiment = parse_experiment(document)
    size = 3 * 2 * 4 * 2 * 2
    assert grid_points(experiment.spec) == size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tried = _grid_run(experiment, size)
    assert not [w for w in caught if "out of range" in str(w.message)]
    grid = grid_space(experiment.spec)
    points = [
        (hp["lr"], hp["optimizer"], hp["batchSize"], blocks[0]["width"], blocks[0]["dropout"])
        for hp, blocks in ((dict(hp), [dict(b) for b in blocks]) for hp, blocks in tried)
    ]
    assert sorted(points) == sorted(
        itertools.product(
            grid["lr"], grid["optimizer"], grid["batchSize"], grid["arch.block.width"], grid["arch.block.dropout"]
        )
    )
