"""trial.trialsPerPod through a real `kubetune run`: each ParallelFor slot is one run-trials step that suggests,
trains and evaluates several trials in turn; the budget and the segments hold as with one trial per step."""

from __future__ import annotations

import copy

import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _mlflow, _run, _study


def test_a_pod_runs_its_share_of_the_segments_trials(tmp_path):
    spec = copy.deepcopy(TINY)
    spec["spec"]["budget"] = {"maxTrials": 7, "parallelTrials": 2, "trialsPerSegment": 5}
    spec["spec"]["trial"] = {"epochs": 1, "trialsPerPod": 3}
    path = tmp_path / "batched.yaml"
    path.write_text(yaml.safe_dump(spec))

    result = _run(path, tmp_path / "home")

    assert result.returncode == 0, result.stdout + result.stderr
    study = _study(tmp_path / "home")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    slots = sorted((t.user_attrs["segment"], t.user_attrs["slot"]) for t in trials)
    assert slots == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]  # 5 then 2, each slot once
    log = (tmp_path / "home" / "logs" / "tiny-digits-segment-0.log").read_text()
    assert "run-trials" in log and "suggest-trial" not in log
    experiment = _mlflow(tmp_path / "home").get_experiment_by_name("tiny-digits")
    runs = _mlflow(tmp_path / "home").search_runs([experiment.experiment_id], "tags.`kubetune.role` = 'trial'")
    assert len(runs) == 7
