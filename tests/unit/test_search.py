"""One lane in-process (no KFP): suggest -> train -> evaluate against a real SQLite study and MLflow store."""

import json
import math

import numpy as np
import optuna
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState, create_trial

from kubetune import study as study_module
from kubetune import tracking, train
from kubetune.data import load_split, save_split
from kubetune.evaluate import evaluate_trial
from kubetune.registry import champion, register_best
from kubetune.search import suggest_trial, train_trial
from kubetune.segments import finish_segment, register_new_best, start_segment
from kubetune.spec import parse_experiment
from kubetune.study import get_trial, load_study, set_trial_attrs
from kubetune.tracking import describe, log_summary
from kubetune.trial_batch import pod_slots, run_trials


def _experiment(name="lane", **strategy):
    return parse_experiment(
        {
            "apiVersion": "kubetune/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {
                "data": {"source": "builtin:digits"},
                "objective": {"metric": "val_accuracy"},
                "parameters": {
                    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                    "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": ["sgd"]}},
                },
                "architecture": {"blocks": {"low": 1, "high": 2}, "block": {"kind": {"choices": ["conv", "mlp"]}}},
                "strategy": strategy or {"sampler": {"name": "random", "seed": 1}},
                "budget": {"maxTrials": 3, "parallelTrials": 1, "trialsPerSegment": 3},
                "trial": {"epochs": 2},
            },
        }
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "1")
    save_split(load_split({"source": "builtin:digits"}), tmp_path / "split.npz")
    return tmp_path


def _lane(experiment, home, slot=0):
    number = suggest_trial(experiment, segment=0, slot=slot)
    result = train_trial(
        experiment,
        number=number,
        split_path=str(home / "split.npz"),
        model_path=str(home / f"m{number}.pt"),
        predictions_path=str(home / f"p{number}.npz"),
    )
    return number, result


def _evaluate(experiment, home, number: int, result: dict):
    """The evaluate step of a lane that ``_lane`` ran in ``home``."""
    return evaluate_trial(
        experiment,
        number=number,
        result=result,
        predictions_path=str(home / f"p{number}.npz"),
        split_path=str(home / "split.npz"),
    )


def _child_runs(home, experiment, number):
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    mlflow_experiment = client.get_experiment_by_name(experiment.name)
    return client.search_runs([mlflow_experiment.experiment_id], filter_string=f"tags.`kubetune.trial` = '{number}'")


def test_a_lane_trains_evaluates_and_tells_once(home):
    experiment = _experiment()
    assert start_segment(experiment, segment=0) == [0, 1, 2]
    number, result = _lane(experiment, home)
    assert result["status"] == "complete" and len(result["history"]) == 2
    paths = {"predictions_path": str(home / "p0.npz"), "split_path": str(home / "split.npz")}
    first = evaluate_trial(experiment, number=number, result=result, **paths)
    again = evaluate_trial(experiment, number=number, result=result, **paths)
    trial = get_trial(load_study(experiment), number)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(first["metrics"]["val_accuracy"]) and trial.value > 0.5
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert len(_child_runs(home, experiment, number)) == 1
    assert set(trial.intermediate_values) == {1, 2}
    assert first["metrics"]["val_accuracy"] == pytest.approx(result["history"][-1]["val_accuracy"])
    assert 0.0 < first["metrics"]["test_accuracy"] <= 1.0 and first["metrics"]["params"] > 0
    # The weights are stored once, uploaded by the train step beside the experiment's run.
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    parent = load_study(experiment).user_attrs["mlflow_parent_run_id"]
    assert [a.path for a in client.list_artifacts(parent, f"trials/trial-{number}")] == [
        f"trials/trial-{number}/model.pt"
    ]
    assert [a.path for a in client.list_artifacts(first["mlflow_run_id"]) if a.path.endswith(".pt")] == []


def test_the_train_step_records_the_hardware_and_the_data_profile_for_meta_learning(home):
    experiment = _experiment()
    start_segment(experiment, segment=0)
    number, _ = _lane(experiment, home)
    study = load_study(experiment)
    hardware = get_trial(study, number).user_attrs["hardware"]
    assert hardware["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hardware["torch_threads"] == 1 and hardware["cpu_count"] >= 1
    assert hardware["device_name"] and hardware["platform"]
    profile = study.user_attrs["data_profile"]
    assert profile["rows"] == 1797 and profile["classes"] == 10 and profile["features"] == 64
    assert profile["source"] == "builtin:digits" and math.prod(profile["input_shape"]) == 64
    assert 0.9 < profile["class_balance"] <= 1.0  # digits is nearly balanced


def test_conditional_parameter_is_recorded_only_when_enabled(home):
    experiment = _experiment()
    start_segment(experiment, segment=0)
    for slot in range(3):
        number = suggest_trial(experiment, segment=0, slot=slot)
        hyper = get_trial(load_study(experiment), number).user_attrs["hyperparameters"]
        assert (hyper["optimizer"] == "sgd") == ("momentum" in get_trial(load_study(experiment), number).params)


def test_a_trial_worse_than_the_median_is_pruned_and_told_pruned(home):
    experiment = _experiment(
        "pruned", sampler={"name": "random", "seed": 0}, pruner={"name": "median", "startupTrials": 1, "warmupSteps": 0}
    )
    start_segment(experiment, segment=0)
    study = load_study(experiment)
    for _ in range(2):  # two finished trials that were perfect from the first epoch
        study.add_trial(create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    number, result = _lane(experiment, home)
    assert result["status"] == "pruned" and result["epochs_run"] == 1
    _evaluate(experiment, home, number, result)
    assert get_trial(load_study(experiment), number).state == TrialState.PRUNED
    (run,) = _child_runs(home, experiment, number)
    assert run.data.tags["kubetune.state"] == "PRUNED"
    assert run.info.status == "KILLED"  # MLflow's runs table shows it apart from the FINISHED complete ones


def test_a_failed_training_fails_the_trial_and_the_search_goes_on(home):
    experiment = _experiment("diverged")
    start_segment(experiment, segment=0)
    number = suggest_trial(experiment, segment=0, slot=0)
    failed = {
        "status": "failed",
        "reason": "loss became nan at epoch 1",
        "epochs_run": 0,
        "train_seconds": 0.1,
        "history": [],
    }
    outcome = evaluate_trial(
        experiment,
        number=number,
        result=failed,
        predictions_path=str(home / "none.npz"),
        split_path=str(home / "split.npz"),
    )
    trial = get_trial(load_study(experiment), number)
    assert outcome["state"] == "FAIL" and trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "loss became nan at epoch 1"
    assert finish_segment(
        experiment, segment=0, submit_next=lambda experiment, segment: None
    ).go_on  # one failure does not end the experiment
    following, result = _lane(experiment, home, slot=1)
    assert following == number + 1 and result["status"] == "complete"


def test_training_a_finished_trial_is_skipped(home):
    experiment = _experiment("finished")
    start_segment(experiment, segment=0)
    number = suggest_trial(experiment, segment=0, slot=0)
    load_study(experiment).tell(number, 0.5)
    result = train_trial(
        experiment,
        number=number,
        split_path=str(home / "split.npz"),
        model_path=str(home / "x.pt"),
        predictions_path=str(home / "x.npz"),
    )
    assert result["status"] == "skipped"
    assert math.isclose(get_trial(load_study(experiment), number).value, 0.5)


def test_a_trial_out_of_gpu_memory_touches_the_device_no_more(home, monkeypatch):
    moves = []

    def out_of_memory(values, device):  # the device boundary: every tensor the trainer puts on the device
        moves.append(device)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "_features", out_of_memory)
    experiment = _experiment("oom")
    start_segment(experiment, segment=0)
    number, result = _lane(experiment, home)
    assert result["status"] == "failed" and result["reason"].startswith("out of memory while moving")
    assert len(moves) == 1  # neither saved nor scored after the failure
    with np.load(home / f"p{number}.npz") as predictions:
        assert list(predictions) == []
    outcome = _evaluate(experiment, home, number, result)
    assert outcome["state"] == "FAIL"


def _registered_best(experiment, home):
    """One completed, evaluated trial, registered as the experiment's model."""
    start_segment(experiment, segment=0)
    number, result = _lane(experiment, home)
    _evaluate(experiment, home, number, result)
    return register_best(experiment)


def test_the_logged_model_belongs_to_the_experiment_not_to_default(home, tmp_path_factory, monkeypatch):
    started_in = tmp_path_factory.mktemp("working-directory")
    monkeypatch.chdir(started_in)
    experiment = _experiment("own-experiment")
    registered = _registered_best(experiment, home)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment.name).experiment_id
    (logged,) = client.search_logged_models(experiment_ids=[experiment_id])
    version = client.get_model_version(experiment.model_name, str(registered["version"]))
    assert logged.model_id in version.source and logged.source_run_id == version.run_id
    assert logged.artifact_location.startswith((home / "mlartifacts").as_uri())
    assert list(started_in.iterdir()) == []  # nothing written where the step happened to run


def test_a_champion_without_a_recorded_value_is_replaced(home):
    experiment = _experiment("unvalued")
    start_segment(experiment, segment=0)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(experiment.model_name)
    by_hand = client.create_model_version(experiment.model_name, source=str(home), tags={"note": "no value tag"})
    client.set_registered_model_alias(experiment.model_name, "champion", by_hand.version)
    registered = _registered_best(experiment, home)
    assert registered["alias_moved"] and champion(experiment)["version"] == registered["version"]


def test_two_runs_registering_one_trial_at_once_leave_one_version(home, monkeypatch):
    from kubetune import registry

    experiment = _experiment("racing")
    first = _registered_best(experiment, home)
    # The other run looked for the trial's version before this one registered it.
    monkeypatch.setattr(registry, "_existing_version", lambda client, name, run_id: None)
    second = register_best(experiment)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{experiment.model_name}'")
    assert [int(v.version) for v in versions] == [first["version"]] == [second["version"]]
    assert champion(experiment)["version"] == first["version"]


def test_a_trial_run_spans_its_training_and_each_epoch_has_its_own_time(home):
    experiment = _experiment("timed")
    start_segment(experiment, segment=0)
    number, result = _lane(experiment, home)
    evaluated = _evaluate(experiment, home, number, result)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(evaluated["mlflow_run_id"])
    assert (run.info.start_time, run.info.end_time) == (result["started_at"], result["ended_at"])
    assert run.info.end_time - run.info.start_time >= 1000 * result["train_seconds"]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.timestamp for m in history] == [row["timestamp"] for row in result["history"]]
    assert run.info.start_time < history[0].timestamp < history[1].timestamp <= run.info.end_time
    assert "timestamp" not in run.data.metrics


def test_the_summary_tag_is_valid_json_and_a_finished_experiment_closes_its_run(home):
    experiment = _experiment("summarized")
    start_segment(experiment, segment=0)
    parent = load_study(experiment).user_attrs["mlflow_parent_run_id"]
    summary = {"experiment": experiment.name, "trials_complete": 3, "pareto_front": list(range(3000))}
    log_summary(parent, summary, {})
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(parent)
    tag = json.loads(run.data.tags["kubetune.summary"])
    assert tag["trials_complete"] == 3 and "pareto_front" not in tag and "summary.json" in tag["truncated"]
    assert run.info.status == "FINISHED"
    start_segment(experiment, segment=1)  # a rerun that may still stop at once leaves it closed
    assert client.get_run(parent).info.status == "FINISHED"
    number, result = _lane(experiment, home)  # the experiment goes on (a raised budget): its run is reopened
    _evaluate(experiment, home, number, result)
    assert client.get_run(parent).info.status == "RUNNING"


def test_a_lost_mlflow_store_gets_a_new_parent_run_before_any_trial_starts(home, capsys, monkeypatch):
    experiment = _experiment("lost-store")
    start_segment(experiment, segment=0)
    first, result = _lane(experiment, home)
    _evaluate(experiment, home, first, result)
    lost = load_study(experiment).user_attrs["mlflow_parent_run_id"]
    # mlflow.db deleted: this process's MLflow still holds the old file open, so the next steps see a new one.
    (home / "mlflow.db").rename(home / "lost.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow-new.db'}")
    assert start_segment(experiment, segment=0) == [0, 1]
    parent = load_study(experiment).user_attrs["mlflow_parent_run_id"]
    assert parent != lost and f"the MLflow run {lost} of experiment 'lost-store' is gone" in capsys.readouterr().err
    # The best trial's run (and weights) went with the store: it is skipped, not retried by every segment.
    registered = register_new_best(experiment)
    assert not registered["registered"] and f"the MLflow run of trial {first} is gone" in registered["reason"]
    number, result = _lane(experiment, home)
    outcome = _evaluate(experiment, home, number, result)
    assert outcome["state"] == "COMPLETE"
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow-new.db'}")
    assert client.get_run(outcome["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == parent


def test_a_local_mlflow_store_error_says_how_to_recover_not_to_start_a_server(home):
    message = describe(MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST))
    assert "server is up" not in message and "run the experiment again" in message
    assert f"sqlite:///{home / 'mlflow.db'}" in message


class _ParentNaming(optuna.samplers.RandomSampler):
    """Stands in for the evolution sampler: every trial after the first is a child of trial 0."""

    def trial_attrs(self, number: int) -> dict:
        return {"parent_trial": 0} if number else {}


@pytest.fixture
def inheriting(home, monkeypatch):
    """An experiment with evolution and inherited weights, its study sampled by a sampler that names parents."""
    monkeypatch.setattr(study_module, "make_sampler", lambda experiment, seed_offset=0: _ParentNaming(seed=seed_offset))
    experiment = _experiment("inherit", sampler={"name": "evolution", "seed": 1}, inheritWeights=True)
    start_segment(experiment, segment=0)
    return experiment


def _initial_weights(monkeypatch) -> dict:
    """Capture each trained model's weights as training starts, keyed by call order."""
    seen: dict[int, dict] = {}
    real = train.train_model

    def spy(model, split, **kwargs):
        seen[len(seen)] = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        return real(model, split, **kwargs)

    monkeypatch.setattr(train, "train_model", spy)
    return seen


def test_the_suggest_step_records_the_parent_the_sampler_mutated(inheriting):
    first = suggest_trial(inheriting, segment=0, slot=0)
    second = suggest_trial(inheriting, segment=0, slot=1)
    study = load_study(inheriting)
    assert "parent_trial" not in get_trial(study, first).user_attrs
    assert get_trial(study, second).user_attrs["parent_trial"] == first == 0


def test_a_child_starts_from_its_parents_trained_weights(inheriting, home, monkeypatch):
    parent, result = _lane(inheriting, home)
    paths = {"predictions_path": str(home / "p0.npz"), "split_path": str(home / "split.npz")}
    evaluate_trial(inheriting, number=parent, result=result, **paths)
    trained = torch.load(home / "m0.pt", weights_only=True)["state_dict"]
    child = suggest_trial(inheriting, segment=0, slot=1)
    study = load_study(inheriting)
    # The same architecture as the parent, so every tensor is inherited whole.
    set_trial_attrs(study, child, {"architecture": get_trial(study, parent).user_attrs["architecture"]})
    initial = _initial_weights(monkeypatch)
    train_trial(
        inheriting,
        number=child,
        split_path=str(home / "split.npz"),
        model_path=str(home / "m1.pt"),
        predictions_path=str(home / "p1.npz"),
    )
    for name, tensor in trained.items():
        assert torch.equal(initial[0][name], tensor), name
    attrs = get_trial(load_study(inheriting), child).user_attrs
    assert attrs["inherited"] is True
    assert attrs["inheritance"] == {"parent": 0, "copied": len(trained), "sliced": 0, "skipped": 0}


@pytest.mark.parametrize(
    ("parent_state", "reason"),
    [
        (TrialState.PRUNED, "parent trial 0 is PRUNED"),
        (TrialState.COMPLETE, "trial 0 has no stored weights"),  # a store that lost them, or never got them
    ],
)
def test_a_child_whose_parent_left_no_weights_trains_from_scratch(inheriting, home, parent_state, reason):
    study = load_study(inheriting)
    values = {"value": 0.5} if parent_state == TrialState.COMPLETE else {"intermediate_values": {1: 0.5}}
    study.add_trial(create_trial(state=parent_state, **values))
    number, result = _lane(inheriting, home)
    assert result["status"] == "complete"
    attrs = get_trial(load_study(inheriting), number).user_attrs
    assert attrs["parent_trial"] == 0 and attrs["inherited"] is False
    assert attrs["inheritance"]["reason"].startswith(reason)


def test_the_weights_under_a_lost_experiment_run_are_reported_missing(inheriting, home):
    with pytest.raises(tracking.MissingWeights, match="is gone"):
        tracking.download_trial_weights("0" * 32, 0, str(home))


def test_a_childs_run_is_tagged_with_what_it_inherited(inheriting, home):
    parent_run_id = load_study(inheriting).user_attrs["mlflow_parent_run_id"]
    run_id = tracking.log_trial(
        inheriting,
        parent_run_id,
        number=5,
        state="COMPLETE",
        hyperparameters={},
        architecture=None,
        history=[],
        metrics={},
        inheritance={"parent": 2, "reason": "parent trial 2 is PRUNED"},
    )
    tags = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["kubetune.inheritance.parent"] == "2"
    assert tags["kubetune.inheritance.reason"] == "parent trial 2 is PRUNED"


def _batched(name: str, per_pod: int):
    data = _experiment(name).to_dict()
    data["spec"]["trial"]["trialsPerPod"] = per_pod
    data["spec"]["budget"].update(maxTrials=7, trialsPerSegment=5)
    return parse_experiment(data)


def test_with_trials_per_pod_a_segment_plans_pods_and_each_runs_its_share_of_the_slots(home):
    experiment = _batched("batched", 3)
    assert start_segment(experiment, segment=0) == [0, 1]  # 5 slots, 3 per pod
    assert [list(pod_slots(experiment, segment=0, pod=pod)) for pod in (0, 1)] == [[0, 1, 2], [3, 4]]
    outcomes = run_trials(experiment, segment=0, pod=1, split_path=str(home / "split.npz"))
    assert [o["state"] for o in outcomes] == ["COMPLETE", "COMPLETE"]
    trials = load_study(experiment).trials
    assert sorted(t.user_attrs["slot"] for t in trials) == [3, 4]
    assert all(t.user_attrs["mlflow_run_id"] == o["mlflow_run_id"] for t, o in zip(trials, outcomes, strict=True))
    with pytest.raises(RuntimeError, match="not of segment 1"):
        pod_slots(experiment, segment=1, pod=0)


def test_one_trial_per_pod_keeps_the_plan_of_slots(home):
    assert start_segment(_batched("single", 1), segment=0) == [0, 1, 2, 3, 4]
