"""A real embedded search of a cell space: kfp.local runs the pipeline; the trials train cell networks, and
MLflow holds each trial's architecture diagram and code, and the champion's diagram."""

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_embedded_run import _run

from kubetune.encoding import encode

TINY_CELL = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "tiny-cell"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy"},
        "architecture": {
            "type": "cell",
            "nodes": 2,
            "operations": {"choices": ["conv3", "skip", "zero"]},
            "cells": {"low": 1, "high": 2},
            "width": {"choices": [8]},
            "reductions": 1,
        },
        "strategy": {"sampler": {"name": "random", "seed": 0}},
        "budget": {"maxTrials": 2, "parallelTrials": 2, "trialsPerSegment": 2},
        "trial": {"epochs": 1},
    },
}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cell")
    spec_path = folder / "tiny-cell.yaml"
    spec_path.write_text(yaml.safe_dump(TINY_CELL))
    home = folder / "home"
    result = _run(spec_path, home)
    assert result.returncode == 0, result.stdout + result.stderr
    return home, result


def test_the_trials_trained_cell_networks(searched):
    home, result = searched
    study = optuna.load_study(study_name="tiny-cell", storage=f"sqlite:///{home / 'optuna.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        architecture = trial.user_attrs["architecture"]
        assert architecture["type"] == "cell" and len(architecture["edges"]) == 2
        assert {"arch.cell.n1.in0", "arch.cell.n2.in0", "arch.cell.n2.in1"} <= set(trial.params)
    assert encode(study.best_trial.user_attrs["architecture"]) in result.stdout


def test_each_trial_run_has_its_diagram_and_the_champion_has_one_too(searched):
    home, _ = searched
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-cell")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kubetune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:
        assert "architecture.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert child.data.tags["kubetune.architecture"].startswith("cell:n2:")
        assert child.data.params["arch.code"] == child.data.tags["kubetune.architecture"]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/champion_architecture.png" in plots
