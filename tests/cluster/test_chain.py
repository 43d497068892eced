"""Chains of segment runs against the KFP API double: changed specs, maxSegments, and lanes that fail.

Each segment is played as its pipeline would run it (ensure-study, then the exit step next-segment),
against a real SQLite study; the double receives the runs that next-segment submits.
"""

import copy
import json

import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from repo_paths import DIGITS

from kubetune.cli import cli
from kubetune.cluster import finish_segment
from kubetune.cluster_settings import ClusterSettings
from kubetune.search import suggest_trial
from kubetune.segments import LOST_LANE_REASON, run_name, start_segment
from kubetune.spec import parse_experiment
from kubetune.study import load_study

SETTINGS = ClusterSettings(image="img:1").to_dict()


@pytest.fixture
def cluster_pod(kfp_api, tmp_path, monkeypatch):
    """A next-segment pod: the KFP host and a study database from its environment."""
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_KFP_HOST", kfp_api.host)
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return kfp_api


def _experiment(**budget):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["budget"].update({"maxTrials": 100, "maxSegments": 100, **budget})
    return parse_experiment(data)


def _run_names(double) -> list[str]:
    return [
        json.loads(body)["display_name"]
        for method, path, body in double.requests
        if (method, path) == ("POST", "/runs")
    ]


def _play(experiment, segments):
    """Each segment as its run would: plan the slots, then the exit step."""
    decisions = []
    for segment in segments:
        start_segment(experiment, segment=segment)
        decisions.append(finish_segment(experiment, segment=segment, cluster=SETTINGS))
    return decisions


def _submit(spec_path, double):
    result = CliRunner().invoke(cli, ["submit", str(spec_path), "--host", double.host, "--image", "img:1"])
    assert result.exit_code == 0, result.output


def test_a_changed_specs_chain_runs_on_beside_the_old_one(cluster_pod, tmp_path):
    old, changed = _experiment(), _experiment(maxTrials=90)
    for number, experiment in enumerate((old, changed)):
        path = tmp_path / f"spec-{number}.yaml"
        path.write_text(yaml.safe_dump(experiment.to_dict()))
        _submit(path, cluster_pod)
        assert all(d.go_on for d in _play(experiment, range(3)))
    expected = [run_name(e, s) for e in (old, changed) for s in range(4)]
    assert _run_names(cluster_pod) == expected, "each chain submits its own segments 1, 2 and 3"
    assert len(set(expected)) == 8


def test_max_segments_counts_every_chain_of_the_experiment(cluster_pod):
    old, changed = _experiment(maxSegments=4), _experiment(maxSegments=4, maxTrials=90)
    assert all(d.go_on for d in _play(old, range(2)))
    first, last = _play(changed, range(2))
    assert first.go_on and not last.go_on and last.reason == "maxSegments reached (4)"
    assert load_study(changed).user_attrs["stop_reason"] == last.reason
    assert run_name(changed, 2) not in _run_names(cluster_pod)


def test_a_lane_that_failed_for_good_fails_its_trial_and_the_search_goes_on(cluster_pod):
    experiment = _experiment()
    start_segment(experiment, segment=0)
    lost = suggest_trial(experiment, segment=0, slot=0)  # its train pod then fails after every retry
    other_chain = suggest_trial(_experiment(maxTrials=90), segment=0, slot=1)  # a changed spec's lane, still running
    decision = finish_segment(experiment, segment=0, cluster=SETTINGS)
    study = load_study(experiment)
    trial = study.trials[lost]
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == LOST_LANE_REASON
    assert study.trials[other_chain].state == TrialState.RUNNING, "another chain's lane is not this segment's"
    assert decision.go_on and _run_names(cluster_pod) == [run_name(experiment, 1)]
    result = CliRunner().invoke(cli, ["status", experiment.name])
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.output and "lane" in result.output


def test_a_reformatted_spec_keeps_its_chain():
    data = yaml.safe_load(DIGITS.read_text())
    reordered = copy.deepcopy({**data, "spec": dict(reversed(list(data["spec"].items())))})
    assert run_name(parse_experiment(data), 3) == run_name(parse_experiment(reordered), 3)
    reordered["spec"]["budget"]["maxTrials"] += 1
    assert run_name(parse_experiment(data), 3) != run_name(parse_experiment(reordered), 3)


def _resume(spec_path, double):
    result = CliRunner().invoke(cli, ["resume", str(spec_path), "--host", double.host, "--image", "img:1"])
    assert result.exit_code == 0, result.output
    return result.output


def _spec_file(experiment, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(experiment.to_dict()))
    return path


def test_resume_continues_a_chain_whose_run_failed_before_its_exit_step(cluster_pod, tmp_path):
    experiment = _experiment()
    spec = _spec_file(experiment, tmp_path)
    _submit(spec, cluster_pod)
    _play(experiment, [0])  # segment 0 ends and submits segment 1, whose pods then fail for good
    assert "still active" in _resume(spec, cluster_pod)
    for run in cluster_pod.runs.values():
        run["state"] = "FAILED"
    assert "segment 1" in _resume(spec, cluster_pod)
    assert "still active" in _resume(spec, cluster_pod), "resuming twice starts one run"
    retried = [json.loads(body) for method, path, body in cluster_pod.requests if (method, path) == ("POST", "/runs")][
        -1
    ]
    assert retried["display_name"] == run_name(experiment, 1) + "-retry1"
    assert retried["runtime_config"]["parameters"]["segment"] == 1
    # The retried run's exit step continues the chain under its usual names.
    _play(experiment, [1])
    assert _run_names(cluster_pod)[-1] == run_name(experiment, 2)


def test_resume_after_a_stop_rule_starts_nothing(cluster_pod, tmp_path):
    experiment = _experiment(maxSegments=1)
    (decision,) = _play(experiment, [0])
    assert not decision.go_on
    assert "stopped by its stop rule (maxSegments reached (1))" in _resume(
        _spec_file(experiment, tmp_path), cluster_pod
    )
    assert _run_names(cluster_pod) == []


def test_resume_of_an_experiment_never_started_says_how_to_start_it(cluster_pod, tmp_path):
    result = CliRunner().invoke(cli, ["resume", str(_spec_file(_experiment(), tmp_path)), "--host", cluster_pod.host])
    assert result.exit_code == 2 and "kubetune submit" in result.output and "Traceback" not in result.output


def test_resume_reads_every_page_of_the_experiments_runs(cluster_pod, tmp_path):
    experiment = _experiment()
    spec = _spec_file(experiment, tmp_path)
    _submit(spec, cluster_pod)
    start_segment(experiment, segment=0)
    (first,) = cluster_pod.runs.values()
    first["state"] = "FAILED"
    for number in range(250):  # the server returns at most 200 runs a page; the active one is on page 2
        run = {**first, "run_id": f"old-{number}", "display_name": f"old-{number}", "state": "SUCCEEDED"}
        cluster_pod.runs[run["run_id"]] = run
    run["state"] = "RUNNING"
    assert "old-249 of experiment" in _resume(spec, cluster_pod)
