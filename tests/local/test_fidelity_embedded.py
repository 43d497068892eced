"""trial.fidelity dataFraction through a real `kubetune run`: kfp.local runs the train steps, each trial climbs the
data-fraction ladder against the shared study, ASHA stops some between levels, and the study and MLflow record
the fidelity of every value reported."""

from __future__ import annotations

import copy

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_embedded_run import TINY, _run, _study

from kubetune.data import load_split
from kubetune.spec import parse_experiment


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    spec = copy.deepcopy(TINY)
    spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}
    spec["spec"]["strategy"] = {"sampler": {"name": "random", "seed": 0}, "pruner": {"name": "asha"}}
    spec["spec"]["budget"] = {"maxTrials": 4, "parallelTrials": 2, "trialsPerSegment": 4}
    spec["spec"]["trial"] = {"epochs": 3, "fidelity": {"kind": "dataFraction", "minFraction": 0.1}}
    folder = tmp_path_factory.mktemp("fidelity")
    spec_path = folder / "fidelity.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    home = folder / "home"
    result = _run(spec_path, home)
    assert result.returncode == 0, result.stdout + result.stderr
    return parse_experiment(spec), home


def test_every_trial_records_the_data_fraction_of_each_value_it_reported(searched):
    experiment, home = searched
    ladder = experiment.spec.fidelity_ladder
    assert [(level.step, level.fraction) for level in ladder] == [(1, 1 / 9), (3, 1 / 3), (9, 1.0)]
    rows = len(load_split(experiment.to_dict()["spec"]["data"]).y_train)  # the split every trial was handed
    trials = [t for t in _study(home).trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) == 4
    for trial in trials:
        fidelity = trial.user_attrs["fidelity"]
        assert fidelity["kind"] == "dataFraction"
        climbed = ladder[: len(fidelity["levels"])]
        assert [(level["step"], level["dataFraction"]) for level in fidelity["levels"]] == [
            (level.step, level.fraction) for level in climbed
        ]
        assert [level["trainRows"] for level in fidelity["levels"]] == [-(-rows * level.step // 9) for level in climbed]
        assert trial.intermediate_values == {level["step"]: level["val_accuracy"] for level in fidelity["levels"]}
        # A completed trial reached all the data; a pruned one was stopped between levels, never after the last.
        if trial.state == TrialState.COMPLETE:
            assert len(fidelity["levels"]) == 3
        else:
            assert 1 <= len(fidelity["levels"]) < 3 and trial.user_attrs["reason"].startswith("pruned after level")
    assert any(trial.state == TrialState.COMPLETE for trial in trials)
    print(f"states: {sorted(t.state.name for t in trials)}")


def test_each_trial_run_in_mlflow_holds_its_fidelity(searched):
    _, home = searched
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-digits").experiment_id])
    trial_runs = {int(r.data.tags["kubetune.trial"]): r for r in runs if r.data.tags.get("kubetune.role") == "trial"}
    study = _study(home)
    assert sorted(trial_runs) == sorted(t.number for t in study.trials if t.state.is_finished())
    for number, run in trial_runs.items():
        levels = study.trials[number].user_attrs["fidelity"]["levels"]
        assert run.data.tags["kubetune.fidelity"] == "dataFraction"
        logged = client.get_metric_history(run.info.run_id, "fidelity.dataFraction")
        assert sorted((m.step, m.value) for m in logged) == [(level["step"], level["dataFraction"]) for level in levels]
