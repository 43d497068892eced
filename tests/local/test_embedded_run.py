"""A real embedded search: kfp.local runs every component as a subprocess, segment after segment.

Checks what a user relies on afterwards: the study, the MLflow runs, the registered model and its
alias, the summary, and that re-running resumes instead of starting over.
"""

import os
import re
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from kubetune.segments import LOST_LANE_REASON

TINY = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "tiny-digits"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy"},
        "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "architecture": {
            "blocks": {"low": 1, "high": 2},
            "block": {"kind": {"choices": ["conv", "mlp"]}, "width": {"choices": [16, 32]}},
        },
        "strategy": {"sampler": {"name": "tpe", "seed": 0}},
        "budget": {"maxTrials": 4, "parallelTrials": 2, "trialsPerSegment": 2},
        "trial": {"epochs": 2},
        "registry": {"modelName": "tiny-digits-model"},
    },
}


def _cli(home, *arguments: str, timeout: int = 600):
    """``kubetune <arguments>`` in embedded mode with ``home`` as its home, as a user runs it."""
    env = {**os.environ, "KUBETUNE_HOME": str(home), "COLUMNS": "200"}
    env.pop("KUBETUNE_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *arguments], capture_output=True, text=True, env=env, timeout=timeout
    )


def _run(spec_path, home):
    return _cli(home, "run", str(spec_path))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedded")
    spec_path = folder / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    home = folder / "home"
    first = _run(spec_path, home)
    assert first.returncode == 0, first.stdout + first.stderr
    return spec_path, home, first


def _study(home):
    return optuna.load_study(study_name="tiny-digits", storage=f"sqlite:///{home / 'optuna.db'}")


def _mlflow(home):
    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def test_the_budget_is_spent_over_two_segments(searched):
    _, home, _result = searched
    study = _study(home)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    assert study.user_attrs["segment"] == 2
    assert study.user_attrs["stop_reason"].startswith("maxTrials reached")
    assert {t.user_attrs["segment"] for t in study.trials} == {0, 1}


def test_reproducibility_is_recorded_in_the_study(searched):
    _, home, _ = searched
    attrs = _study(home).user_attrs
    assert attrs["seed"] == 0
    assert {"python", "optuna", "torch", "mlflow", "kfp"} <= set(attrs["versions"])
    assert attrs["spec"]["spec"]["parameters"]["lr"]["low"] == 1e-3
    assert len(attrs["fingerprint"]) == 16


def test_summary_is_printed_with_where_to_look(searched):
    _, _, result = searched
    assert "maxTrials reached" in result.stdout
    assert "best val accuracy" in result.stdout
    assert re.search(r"models:/tiny-digits-model@champion \(version \d+, trial \d+\)", result.stdout)
    assert "mlflow ui --backend-store-uri" in result.stdout and "optuna-dashboard" in result.stdout


def test_every_trial_is_a_child_run_of_the_experiment_run(searched):
    _, home, _ = searched
    client = _mlflow(home)
    experiment = client.get_experiment_by_name("tiny-digits")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kubetune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["kubetune.trial"]) for r in children) == [0, 1, 2, 3]
    child = children[0]
    assert "lr" in child.data.params and "arch.blocks" in child.data.params
    history = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "plots", "experiment.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.html" in plots and "plots/param_importances.html" in plots


def test_best_model_is_registered_under_the_champion_alias(searched):
    _, home, _ = searched
    client = _mlflow(home)
    best = _study(home).best_trial
    champion = client.get_model_version_by_alias("tiny-digits-model", "champion")
    assert champion.tags["kubetune.trial"] == str(best.number)
    assert float(champion.tags["kubetune.value"]) == pytest.approx(best.value)
    trials = [v.tags["kubetune.trial"] for v in client.search_model_versions("name = 'tiny-digits-model'")]
    assert len(trials) == len(set(trials))


def test_registered_model_loads_and_predicts(searched):
    import mlflow.pyfunc
    import numpy as np

    _, home, _ = searched
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/tiny-digits-model@champion")
    predictions = model.predict(np.zeros((3, 1, 8, 8), dtype=np.float32))
    assert np.asarray(predictions).shape == (3, 10)


def test_rerun_resumes_and_counts_earlier_trials(searched):
    spec_path, home, _ = searched
    before = {t.number: t.params for t in _study(home).trials}
    again = _run(spec_path, home)
    assert again.returncode == 0, again.stderr
    assert "maxTrials reached" in again.stdout
    assert len(_study(home).trials) == 4

    grown = {**TINY, "spec": {**TINY["spec"], "budget": {**TINY["spec"]["budget"], "maxTrials": 5}}}
    spec_path.write_text(yaml.safe_dump(grown))
    resumed = _run(spec_path, home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = _study(home)
    assert len(study.trials) == 5
    assert {t.number: t.params for t in study.trials if t.number in before} == before
    versions = [v.tags["kubetune.trial"] for v in _mlflow(home).search_model_versions("name = 'tiny-digits-model'")]
    assert len(versions) == len(set(versions))


def test_status_reports_trials_champion_segment_and_stop_reason(searched):
    _, home, _ = searched
    shown = _cli(home, "status", "tiny-digits", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"trials\s+\S*\s*\d+ of \d+ done", shown.stdout)
    assert "models:/tiny-digits-model@champion version" in shown.stdout and "maxTrials reached" in shown.stdout
    unknown = _cli(home, "status", "no-such-experiment", timeout=120)
    assert unknown.returncode == 2 and "no experiment 'no-such-experiment'" in unknown.stderr


def test_report_writes_the_page_of_the_run_and_attaches_it_to_the_parent_run(searched, tmp_path):
    _, home, _ = searched
    shown = _cli(home, "report", "tiny-digits", "-o", str(tmp_path), timeout=300)
    assert shown.returncode == 0, shown.stderr
    page = (tmp_path / "tiny-digits.html").read_text()
    study = _study(home)
    assert study.user_attrs["fingerprint"] in page and study.user_attrs["versions"]["torch"] in page
    assert page.count("data:image/png;base64,") == 3 and "strategy.baseline: random" in page
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert [a.path for a in _mlflow(home).list_artifacts(parent, "report")] == ["report/tiny-digits.html"]


def test_changed_search_space_is_refused_with_exit_code_2(searched, tmp_path):
    _, home, _ = searched
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["spec"]["parameters"]["lr"]["high"] = 0.5
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    result = _run(path, home)
    assert result.returncode == 2
    assert "different data, objective or search space" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_lane_still_ends_its_segment_then_exits_1_and_points_at_its_log(tmp_path):
    spec = {
        **TINY,
        "metadata": {"name": "broken-step"},
        "spec": {**TINY["spec"], "budget": {"maxTrials": 1, "parallelTrials": 1, "trialsPerSegment": 1}},
    }
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "KUBETUNE_HOME": str(tmp_path / "home"), "KUBETUNE_TRAIN_THREADS": "not-a-number"}
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 1
    assert "a pipeline step failed" in result.stderr and "Traceback" not in result.stderr
    log = re.search(r"see the step's log in (\S+)", result.stderr).group(1)
    assert "not-a-number" in open(log).read()
    # The segment's exit step ran after the failed lane: the trial is failed, not left running, and the
    # experiment's stop rule is recorded.
    study = optuna.load_study(study_name="broken-step", storage=f"sqlite:///{tmp_path / 'home' / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == LOST_LANE_REASON
    assert study.user_attrs["stop_reason"] == "maxTrials reached (1 of 1)"
