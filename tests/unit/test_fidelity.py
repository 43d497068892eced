"""trial.fidelity: the ladder of levels, what a level changes (the rows, the widths), the spec's rules, and
trials that climb the ladder against a real study, pruned between levels by Optuna's pruners."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState, create_trial
from test_search import _child_runs, _evaluate, _lane, home  # noqa: F401 - home is a fixture
from test_spec import _apply
from torch import nn

from kubetune import nas
from kubetune.fidelity import Level, ladder, scale_width, subset_rows
from kubetune.samplers import make_pruner
from kubetune.segments import start_segment
from kubetune.spec import SpecError, parse_experiment
from kubetune.study import get_trial, load_study

SPEC = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "fidelity"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy"},
        "parameters": {"lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        "architecture": {"blocks": {"low": 1, "high": 2}, "block": {"kind": {"choices": ["conv", "mlp"]}}},
        "strategy": {"sampler": {"name": "random", "seed": 0}, "pruner": {"name": "asha"}},
        "budget": {"maxTrials": 3, "parallelTrials": 1, "trialsPerSegment": 3},
        "trial": {"epochs": 2, "fidelity": {"kind": "dataFraction", "minFraction": 0.1}},
    },
}


def _spec(**changes) -> dict:
    """SPEC with ``changes`` at dotted paths below ``spec`` (``trial.fidelity``, ``strategy.pruner``)."""
    return _apply(SPEC, {f"spec.{path}": value for path, value in changes.items()})


# The ladder


def test_the_ladder_climbs_by_the_reduction_factor_from_min_fraction_to_one():
    assert ladder(0.1, 3) == [Level(1, 1 / 9), Level(3, 1 / 3), Level(9, 1.0)]
    assert ladder(0.1, 2) == [Level(1, 1 / 8), Level(2, 1 / 4), Level(4, 1 / 2), Level(8, 1.0)]
    assert ladder(0.5, 2) == [Level(1, 0.5), Level(2, 1.0)]
    assert ladder(0.1111, 3)[0] == Level(1, 1 / 9)  # a rounded 1/9 still admits the level 1/9
    assert ladder(0.112, 3)[0] == Level(1, 1 / 3)  # but nothing smaller than minFraction
    for levels in (ladder(0.01, 3), ladder(0.2, 2)):  # fraction = step / top step, as the README says
        assert all(level.fraction == pytest.approx(level.step / levels[-1].step) for level in levels)


def _climb(study: optuna.Study, value: float, steps: list[int]) -> int | None:
    """A trial that reports ``value`` at each step, asking the pruner after every one but the last; the step
    it was pruned at, or None when it ran to the end."""
    trial = study.ask()
    for step in steps:
        trial.report(value, step)
        if step != steps[-1] and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, value)
    return None


def test_asha_prunes_at_the_first_level_a_trial_worse_than_the_best_so_far():
    experiment = parse_experiment(SPEC)
    steps = [level.step for level in experiment.spec.fidelity_ladder]
    study = optuna.create_study(direction="maximize", pruner=make_pruner(experiment))
    assert _climb(study, 0.9, steps) is None  # the first trial at a rung is promoted
    assert _climb(study, 0.5, steps) == 1  # ASHA's first rung is the first level's step
    assert _climb(study, 0.95, steps) is None


def test_hyperband_spans_the_ladder_so_its_top_bracket_never_prunes():
    # Every trial is worse than all before it, so a bracket prunes each trial after its first at the bracket's
    # first rung. Levels at steps 1, 3, 9 give Hyperband 3 brackets only when its maximum resource is the top
    # step (9); the bracket starting at 9 never prunes, since no trial asks after its last level.
    experiment = parse_experiment(_spec(**{"strategy.pruner": {"name": "hyperband"}}))
    steps = [level.step for level in experiment.spec.fidelity_ladder]
    assert steps == [1, 3, 9]
    study = optuna.create_study(direction="maximize", pruner=make_pruner(experiment), study_name="hyperband")
    pruned_at = [_climb(study, 1.0 - number / 100, steps) for number in range(40)]
    assert {step for step in pruned_at if step is not None} == {1, 3}
    assert pruned_at.count(None) > 3  # more than the first trial of each of 3 brackets: the top bracket's


# What a level changes


def test_subset_rows_is_fixed_by_the_seed_stratified_and_nested():
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    first = subset_rows(labels, 0.2, seed=7)
    assert np.array_equal(first, subset_rows(labels, 0.2, seed=7))
    assert not np.array_equal(first, subset_rows(labels, 0.2, seed=8))
    assert np.bincount(labels[first]).tolist() == [12, 6, 2]  # each class keeps its share
    assert set(first) <= set(subset_rows(labels, 0.5, seed=7))  # a larger level holds every row of a smaller
    assert len(subset_rows(labels, 1e-6, seed=7)) == 2  # at least two rows: batch norm cannot train on one
    assert np.array_equal(subset_rows(labels, 1.0, seed=7), np.arange(100))


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules() if _weighted(m)]


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def test_width_scales_every_block_of_a_macro_architecture():
    architecture = {"blocks": [{"kind": "conv", "width": 32}, {"kind": "mlp", "width": 16}]}
    third = scale_width(architecture, 1 / 3)
    assert [block["width"] for block in third["blocks"]] == [11, 5]  # rounded to the nearest
    assert architecture["blocks"][0]["width"] == 32  # the original is left alone
    model = nas.build_model(third, input_shape=(1, 8, 8), num_classes=10)
    assert _widths(model) == [11, 5, 10]  # the head keeps its classes


def test_width_scales_a_cell_architecture_and_its_reductions_double_the_scaled_width():
    architecture = {
        "type": "cell",
        "nodes": 1,
        "edges": [["conv3"]],
        "cells": 2,
        "width": 16,
        "reductions": 1,
    }
    half = scale_width(architecture, 0.5)
    assert half["width"] == 8 and architecture["width"] == 16
    model = nas.build_model(half, input_shape=(1, 8, 8), num_classes=10)
    # stem 8, cell 8, reduction to 16, cell 16, head 10
    assert _widths(model) == [8, 8, 16, 16, 10]
    full = nas.build_model(architecture, input_shape=(1, 8, 8), num_classes=10)
    assert nas.count_parameters(model) < nas.count_parameters(full)


# The spec's rules

REJECTED = [
    ("unknown-kind", {"trial.fidelity": "steps"}, "spec.trial.fidelity.kind: must be one of epochs, dataFraction"),
    ("zero-fraction", {"trial.fidelity.minFraction": 0}, "spec.trial.fidelity.minFraction: Input should be greater"),
    (
        "one-level",
        {"trial.fidelity.minFraction": 0.5},
        "spec.trial.fidelity.minFraction: must give 2 to 10 levels (1, 1/3, 1/3^2, ... down to minFraction) but 0.5 "
        "gives 1; use a minFraction from 5.08e-05 to 0.333",
    ),
    ("too-many-levels", {"trial.fidelity.minFraction": 1e-6}, "but 1e-06 gives 13"),
    (
        "no-pruner",
        {"strategy.pruner": {"name": "none"}},
        "spec.trial.fidelity.kind: dataFraction needs a pruner (strategy.pruner.name median, asha or hyperband)",
    ),
    (
        "curve-pruner",
        {"strategy.pruner": {"name": "curve"}},
        "spec.strategy.pruner.name: curve extrapolates a curve of epochs and needs fidelity epochs",
    ),
    (
        "unreported-objective",
        {"objective": {"metric": "params"}},
        "needs the objective to be val_accuracy or val_loss, the value each level reports, but the objective is "
        "'params'",
    ),
    (
        "min-resource",
        {"strategy.pruner": {"name": "asha", "minResource": 2}},
        "spec.strategy.pruner.minResource: applies to fidelity epochs only",
    ),
    (
        "fraction-with-epochs",
        {"trial.fidelity": {"kind": "epochs", "minFraction": 0.2}},
        "spec.trial.fidelity.minFraction: applies to kind dataFraction or width only but kind is epochs",
    ),
    (
        "width-below-one",
        {"trial.fidelity": {"kind": "width", "minFraction": 0.1}, "architecture.block.width": {"choices": [4, 8]}},
        "spec.trial.fidelity.minFraction: must leave every width at least 1 at the smallest level, but 4 x 0.111 "
        "rounds to 0; use a minFraction of at least 0.125",
    ),
    (
        "width-below-one-default-network",
        {"trial.fidelity": {"kind": "width", "minFraction": 0.01}, "architecture": None},
        "but 32 x 0.0123 rounds to 0",
    ),
    (
        "inherit-weights",
        {"strategy.sampler": {"name": "evolution", "seed": 0}, "strategy.inheritWeights": True},
        "spec.strategy.inheritWeights: needs fidelity epochs: with fidelity dataFraction every level trains a fresh",
    ),
]


@pytest.mark.parametrize(("changes", "message"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_a_bad_fidelity_is_refused_with_the_field_and_the_rule(changes, message):
    document = _spec(**changes)
    with pytest.raises(SpecError) as caught:
        parse_experiment(document)
    assert message in str(caught.value)


def test_a_bare_kind_means_the_default_min_fraction_and_epochs_keeps_old_fingerprints():
    bare = parse_experiment(_spec(**{"trial.fidelity": "dataFraction"}))
    assert bare.spec.fidelity_ladder == parse_experiment(SPEC).spec.fidelity_ladder
    assert parse_experiment(bare.to_dict()) == bare
    cell = _spec(**{"trial.fidelity": "width", "architecture": {"type": "cell", "width": {"choices": [9, 16]}}})
    assert [level.step for level in parse_experiment(cell).spec.fidelity_ladder] == [1, 3, 9]
    plain = _spec(**{"strategy.pruner": {"name": "median"}})
    del plain["spec"]["trial"]["fidelity"]
    epochs = _spec(**{"trial.fidelity": "epochs", "strategy.pruner": {"name": "median"}})
    fingerprints = {parse_experiment(d).search_space_fingerprint() for d in (plain, epochs)}
    assert len(fingerprints) == 1  # studies recorded before trial.fidelity existed resume unchanged
    assert bare.search_space_fingerprint() not in fingerprints  # a step means another thing


# Trials that climb the ladder against a real study and MLflow


def test_a_trial_worse_than_the_median_at_the_first_level_is_pruned_with_its_fidelity_recorded(home):  # noqa: F811
    experiment = parse_experiment(_spec(**{"strategy.pruner": {"name": "median", "startupTrials": 1}}))
    start_segment(experiment, segment=0)
    study = load_study(experiment)
    for _ in range(2):  # two finished trials that were perfect at every level
        study.add_trial(create_trial(value=1.0, intermediate_values={1: 1.0, 3: 1.0, 9: 1.0}))
    number, result = _lane(experiment, home)
    assert result["status"] == "pruned" and result["epochs_run"] == 2
    assert result["reason"] == "pruned after level 1 of 3 (dataFraction 0.111, step 1)"
    trial = get_trial(load_study(experiment), number)
    value = trial.intermediate_values[1]
    assert set(trial.intermediate_values) == {1}
    train_rows = len(np.load(home / "split.npz")["y_train"])
    assert trial.user_attrs["fidelity"] == {
        "kind": "dataFraction",
        "levels": [{"step": 1, "dataFraction": 1 / 9, "trainRows": -(-train_rows // 9), "val_accuracy": value}],
    }
    _evaluate(experiment, home, number, result)
    assert get_trial(load_study(experiment), number).state == TrialState.PRUNED
    (run,) = _child_runs(home, experiment, number)
    assert run.data.tags["kubetune.fidelity"] == "dataFraction"
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    logged = client.get_metric_history(run.info.run_id, "fidelity.val_accuracy")
    assert [(m.step, m.value) for m in logged] == [(1, value)]


def test_a_trial_that_is_never_pruned_climbs_every_width_level_and_keeps_the_full_network(home):  # noqa: F811
    experiment = parse_experiment(_spec(**{"trial.fidelity": {"kind": "width", "minFraction": 0.1}}))
    start_segment(experiment, segment=0)
    number, result = _lane(experiment, home)  # the first trial: ASHA promotes it at every rung
    assert result["status"] == "complete" and result["epochs_run"] == 3 * 2 and len(result["history"]) == 2
    trial = get_trial(load_study(experiment), number)
    levels = trial.user_attrs["fidelity"]["levels"]
    assert [(level["step"], level["width"]) for level in levels] == [(1, 1 / 9), (3, 1 / 3), (9, 1.0)]
    assert trial.intermediate_values == {level["step"]: level["val_accuracy"] for level in levels}
    full = nas.build_model(trial.user_attrs["architecture"], input_shape=(1, 8, 8), num_classes=10)
    assert result["params"] == nas.count_parameters(full)  # the saved network is the full-width one
    outcome = _evaluate(experiment, home, number, result)
    assert outcome["state"] == "COMPLETE"
    assert outcome["metrics"]["val_accuracy"] == pytest.approx(levels[-1]["val_accuracy"])
    (run,) = _child_runs(home, experiment, number)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    widths = client.get_metric_history(run.info.run_id, "fidelity.width")
    assert sorted((m.step, m.value) for m in widths) == [(1, pytest.approx(1 / 9)), (3, pytest.approx(1 / 3)), (9, 1.0)]
