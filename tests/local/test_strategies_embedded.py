"""The evolution and rl samplers through a real `kubetune run`: kfp.local runs each suggest step as a fresh
process that rebuilds the sampler from the spec and the study."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

TINY = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "tiny-strategy"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy"},
        "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "architecture": {
            "blocks": {"low": 1, "high": 2},
            "block": {"kind": {"choices": ["mlp"]}, "width": {"choices": [8, 16]}},
        },
        "budget": {"maxTrials": 5, "parallelTrials": 1, "trialsPerSegment": 5},
        "trial": {"epochs": 1},
        "registry": {"modelName": "tiny-strategy-model"},
    },
}


def _search(folder, sampler: dict) -> optuna.Study:
    document = copy.deepcopy(TINY)
    document["spec"]["strategy"] = {"sampler": sampler}
    spec_path = folder / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(document))
    home = folder / "home"
    env = {**os.environ, "KUBETUNE_HOME": str(home), "COLUMNS": "200"}
    env.pop("KUBETUNE_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", str(spec_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return optuna.load_study(study_name="tiny-strategy", storage=f"sqlite:///{home / 'optuna.db'}")


@pytest.mark.parametrize(
    "sampler",
    [{"name": "evolution", "seed": 0, "population": 2, "tournament": 2}, {"name": "rl", "seed": 0}],
    ids=["evolution", "rl"],
)
def test_the_search_completes_its_trials(tmp_path, sampler):
    study = _search(tmp_path, sampler)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    parents = [t.user_attrs.get("parent_trial") for t in trials]
    if sampler["name"] == "evolution":  # the first two fill the population; every later one is a child
        assert parents[:2] == [None, None]
        assert all(parent in range(number) for number, parent in enumerate(parents) if number >= 2)
    else:
        assert parents == [None] * 5
