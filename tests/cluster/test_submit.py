"""Cluster mode against a local HTTP double of the KFP API (no KFP server can run here)."""

import json

import pytest
import yaml
from click.testing import CliRunner
from repo_paths import CELL_EXAMPLE, DIGITS

from kubetune.cli import cli
from kubetune.cluster import finish_segment, run_name
from kubetune.cluster_settings import ClusterSettings
from kubetune.redaction import redact_url
from kubetune.segments import start_segment
from kubetune.spec import load_experiment, parse_experiment
from kubetune.study import load_study


def _posted_runs(double):
    return [json.loads(body) for method, path, body in double.requests if (method, path) == ("POST", "/runs")]


def _next_segment_inputs(run) -> dict:
    """The constants the run's exit step is compiled with: the mode's finish_segment and its settings."""
    parameters = run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]["next-segment"]["inputs"]["parameters"]
    return {name: value["runtimeValue"]["constant"] for name, value in parameters.items() if "runtimeValue" in value}


def test_submit_starts_one_run_and_the_same_spec_again_starts_nothing(kfp_api):
    first = CliRunner().invoke(cli, ["submit", str(DIGITS), "--host", kfp_api.host, "--image", "img:1"])
    second = CliRunner().invoke(cli, ["submit", str(DIGITS), "--host", kfp_api.host, "--image", "img:1"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "already submitted" in second.output
    (run,) = _posted_runs(kfp_api)
    assert run["display_name"] == run_name(load_experiment(DIGITS), 0)
    assert run["runtime_config"]["parameters"]["segment"] == 0
    assert set(run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]) == {
        "experiment_spec",
        "segment",
    }, "the settings are fixed at compile time, not a run parameter"
    finish = _next_segment_inputs(run)
    assert finish["finish"] == "cluster.finish_segment"
    settings = json.loads(finish["finish_arguments"])["cluster"]
    assert settings["image"] == "img:1" and settings["secret"] == "kubetune-credentials"


def test_a_changed_spec_starts_a_new_run(kfp_api, tmp_path):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["budget"]["maxTrials"] = 40
    changed = tmp_path / "digits.yaml"
    changed.write_text(yaml.safe_dump(data))
    for path in (str(DIGITS), str(changed)):
        assert CliRunner().invoke(cli, ["submit", path, "--host", kfp_api.host]).exit_code == 0
    names = [run["display_name"] for run in _posted_runs(kfp_api)]
    assert len(names) == 2 and len(set(names)) == 2


def test_unreachable_host_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["submit", str(DIGITS), "--host", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "KFP API at http://127.0.0.1:1" in result.output and "Traceback" not in result.output


def test_missing_host_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("KUBETUNE_KFP_HOST", raising=False)
    result = CliRunner().invoke(cli, ["submit", str(DIGITS)])
    assert result.exit_code == 2 and "KUBETUNE_KFP_HOST" in result.output


def test_register_pipeline_is_idempotent_per_version(kfp_api):
    args = ["register-pipeline", "--host", kfp_api.host, "--name", "kubetune-search"]
    outputs = [CliRunner().invoke(cli, args + ["--version", v]).output for v in ("0.1.0", "0.1.0", "0.2.0")]
    assert "registered" in outputs[0] and "already registered" in outputs[1] and "already" not in outputs[2]
    (pipeline_id,) = kfp_api.pipelines
    assert [v["display_name"] for v in kfp_api.versions[pipeline_id]] == ["kubetune-search", "0.1.0", "0.2.0"]


@pytest.fixture
def study_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _experiment(**budget):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["budget"].update(budget)
    return parse_experiment(data)


def test_next_segment_submits_the_following_run_once_with_its_idempotency_key(kfp_api, study_home, monkeypatch):
    monkeypatch.setenv("KUBETUNE_KFP_HOST", kfp_api.host)
    experiment = _experiment()
    start_segment(experiment, segment=0)
    settings = {
        "image": "img:1",
        "trainer_image": "img:gpu",
        "secret": "s",
        "config_map": "c",
        "image_pull_secrets": [],
        "shm_size": "1Gi",
        "trial_timeout_seconds": 60,
        "infrastructure_retries": 1,
    }
    first = finish_segment(experiment, segment=0, cluster=settings)
    again = finish_segment(experiment, segment=0, cluster=settings)
    assert first.go_on and again.go_on
    (run,) = _posted_runs(kfp_api)
    assert run["runtime_config"]["parameters"]["segment"] == 1
    assert run["display_name"] == run_name(experiment, 1)
    (run_id,) = kfp_api.runs
    assert load_study(experiment).user_attrs[f"submitted:{run_name(experiment, 1)}"] == run_id
    carried = json.loads(_next_segment_inputs(run)["finish_arguments"])["cluster"]
    assert ClusterSettings.from_dict(carried) == ClusterSettings.from_dict(settings), "the chain keeps its settings"


def test_a_stopped_experiment_submits_nothing_and_records_why(kfp_api, study_home, monkeypatch):
    monkeypatch.setenv("KUBETUNE_KFP_HOST", kfp_api.host)
    experiment = _experiment(maxSegments=1)
    start_segment(experiment, segment=0)
    decision = finish_segment(experiment, segment=0, cluster={"image": "img:1"})
    assert not decision.go_on and "maxSegments" in decision.reason
    assert load_study(experiment).user_attrs["stop_reason"] == decision.reason
    assert _posted_runs(kfp_api) == []


def test_pipeline_carries_no_credentials(kfp_api, monkeypatch):
    monkeypatch.setenv("KUBETUNE_STORAGE", "postgresql+psycopg://kt:Pw-9f8e7d@db:5432/optuna")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Secret-abc123xyz")
    assert CliRunner().invoke(cli, ["submit", str(DIGITS), "--host", kfp_api.host]).exit_code == 0
    sent = b"".join(body for _, _, body in kfp_api.requests)
    assert b"Pw-9f8e7d" not in sent and b"Secret-abc123xyz" not in sent
    assert "Pw-9f8e7d" not in redact_url("postgresql+psycopg://kt:Pw-9f8e7d@db:5432/optuna")
    assert ClusterSettings().secret == "kubetune-credentials"


@pytest.mark.parametrize(
    "strategy, trial",
    [
        ({"oneShot": {"topK": 2}}, {}),
        ({"sampler": {"name": "darts", "seed": 0, "epochs": 2}}, {}),
        ({"pruner": {"name": "asha"}}, {"fidelity": {"kind": "dataFraction", "minFraction": 0.1}}),
        ({"pruner": {"name": "curve", "threshold": 0.1}}, {}),
        ({}, {"trialsPerPod": 4}),
        ({"warmStart": {"source": "meta", "trials": 2}}, {}),
    ],
    ids=["one-shot", "darts", "data-fraction", "curve", "trials-per-pod", "warm-start"],
)
def test_each_strategy_compiles_and_passes_the_strict_double(kfp_api, tmp_path, strategy, trial):
    """Every strategy of issues 12 to 14 reaches the server as a pipeline the minimum backend's protos parse;
    the supernet strategies add the search-supernet step, warmStart the warm-start step, trialsPerPod the
    run-trials step."""
    data = yaml.safe_load(CELL_EXAMPLE.read_text())
    data["spec"]["strategy"].update(strategy)
    data["spec"]["trial"].update(trial)
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["submit", str(path), "--host", kfp_api.host, "--image", "img:1"])
    assert result.exit_code == 0, result.output
    (run,) = _posted_runs(kfp_api)
    assert json.loads(run["runtime_config"]["parameters"]["experiment_spec"])["spec"]["strategy"]["sampler"]
    components = run["pipeline_spec"]["pipeline_spec"]["components"]
    assert ("comp-search-supernet" in components) == ("oneShot" in strategy or "sampler" in strategy)
    assert ("comp-run-trials" in components) == ("trialsPerPod" in trial)
    assert ("comp-suggest-trial" in components) != ("trialsPerPod" in trial)
    assert ("comp-warm-start" in components) == ("warmStart" in strategy)


def test_seeds_and_a_baseline_submit_a_chain_of_runs_per_study(kfp_api, tmp_path):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["strategy"].update(seeds=2, baseline="random")
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["submit", str(path), "--host", kfp_api.host, "--image", "img:1"])
    assert result.exit_code == 0, result.output
    runs = _posted_runs(kfp_api)
    specs = [json.loads(run["runtime_config"]["parameters"]["experiment_spec"]) for run in runs]
    assert [s["metadata"]["name"] for s in specs] == [
        "digits-cnn",
        "digits-cnn-seed-2",
        "digits-cnn-baseline-random",
        "digits-cnn-baseline-random-seed-2",
    ]
    assert [s["spec"]["strategy"]["sampler"]["name"] for s in specs] == ["tpe", "tpe", "random", "random"]
    assert all(run["runtime_config"]["parameters"]["segment"] == 0 for run in runs)
    again = CliRunner().invoke(cli, ["submit", str(path), "--host", kfp_api.host, "--image", "img:1"])
    assert again.exit_code == 0 and again.output.count("already submitted") == 4
    assert len(_posted_runs(kfp_api)) == 4
