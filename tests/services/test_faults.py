"""Faults that must leave nothing lost, against the real PostgreSQL, S3 and MLflow servers.

1. a trainer killed with SIGKILL mid-trial: failed after the heartbeat grace period, retried, and
   the experiment still ends with the requested number of completed trials;
2. the whole ``kubetune run`` killed mid-segment and started again: it resumes without losing or
   duplicating anything;
3. PostgreSQL restarted mid-search: the lanes reconnect and go on;
4. the S3 server or the MLflow server down when the best model is registered: bounded retries, a
   clear error naming the endpoint, and exactly one registration once it is back;
5. a trial that diverges (NaN loss) or runs out of memory fails alone; the search goes on.

Waiting out the real grace period (3 x heartbeatSeconds, at least 15 s) would only slow the tests
down, so where a test needs a trial to be stale it moves its recorded heartbeat an hour back in the
database; that is exactly what the clock would have done.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from kubetune.data import load_split, save_split
from kubetune.segments import finish_segment, start_segment
from kubetune.spec import Experiment, parse_experiment
from kubetune.study import count_trials, get_trial, load_study

SPAWN = multiprocessing.get_context("spawn")


def _document(name: str, *, max_trials: int = 3, lanes: int = 1, epochs: int = 1, parameters: dict | None = None,
              model: str | None = None) -> dict:
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "data": {"source": "builtin:digits"},
            "objective": {"metric": "val_accuracy"},
            "parameters": parameters or {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "architecture": {"blocks": {"low": 1, "high": 1},
                             "block": {"kind": {"choices": ["mlp"]}, "width": {"choices": [8, 16]}}},
            "strategy": {"sampler": {"name": "tpe", "seed": 0}},
            "budget": {"maxTrials": max_trials, "parallelTrials": lanes, "trialsPerSegment": max_trials},
            "trial": {"epochs": epochs, "heartbeatSeconds": 5},
            "registry": {"modelName": model or name},
        },
    }


def _experiment(name: str, **options) -> Experiment:
    return parse_experiment(_document(name, **options))


def _paths(folder: Path, number: int) -> dict[str, str]:
    return {"model_path": str(folder / f"model-{number}"), "predictions_path": str(folder / f"predictions-{number}")}


def _lane(experiment: Experiment, folder: Path, *, slot: int = 0, segment: int = 0) -> dict:
    """One suggest -> train -> evaluate, in this process, as the pipeline's steps run it."""
    from kubetune.evaluate import evaluate_trial
    from kubetune.search import suggest_trial, train_trial

    number = suggest_trial(experiment, segment=segment, slot=slot)
    split = str(folder / "split.npz")
    result = train_trial(experiment, number=number, split_path=split, **_paths(folder, number))
    return evaluate_trial(experiment, number=number, result=result, split_path=split, **_paths(folder, number))


def _postgres_url(stack_env: dict) -> str:
    return stack_env["KUBETUNE_STORAGE"].replace("postgresql+psycopg://", "postgresql://")


def _age_heartbeats(stack_env: dict, trial_ids: list[int]) -> None:
    """Move the recorded heartbeats of ``trial_ids`` an hour back: they are now past any grace period."""
    with psycopg.connect(_postgres_url(stack_env), autocommit=True) as connection:
        connection.execute(
            "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '1 hour' WHERE trial_id = ANY(%s)",
            (trial_ids,),
        )


def _heartbeat_trial_ids(stack_env: dict) -> set[int]:
    with psycopg.connect(_postgres_url(stack_env)) as connection:
        return {row[0] for row in connection.execute("SELECT trial_id FROM trial_heartbeats")}


@pytest.fixture
def folder(tmp_path: Path, use_stack_env, monkeypatch) -> Path:
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "1")
    save_split(load_split({"source": "builtin:digits"}), tmp_path / "split.npz")
    return tmp_path


# --------------------------------------------------------------------------------------------
# 1. A trainer killed with SIGKILL


def train_in_process(spec: str, number: int, folder: str) -> None:
    os.environ["KUBETUNE_TRAIN_THREADS"] = "1"
    from kubetune.search import train_trial

    train_trial(parse_experiment(json.loads(spec)), number=number, split_path=str(Path(folder) / "split.npz"),
                **_paths(Path(folder), number))


def test_a_killed_trainer_is_failed_after_the_grace_period_and_retried(folder, stack_env):
    experiment = _experiment(f"killed-trainer-{secrets.token_hex(3)}", max_trials=3, epochs=20)
    start_segment(experiment, segment=0)
    from kubetune.search import suggest_trial

    number = suggest_trial(experiment, segment=0, slot=0)
    trainer = SPAWN.Process(target=train_in_process, args=(experiment.to_json(), number, str(folder)))
    trainer.start()
    try:
        deadline = time.monotonic() + 120
        while not get_trial(load_study(experiment), number).intermediate_values:  # it is training now
            assert trainer.is_alive() and time.monotonic() < deadline, "the trainer never reported an epoch"
            time.sleep(0.05)
        os.kill(trainer.pid, signal.SIGKILL)
    finally:
        trainer.join(30)
    assert trainer.exitcode == -signal.SIGKILL
    killed = get_trial(load_study(experiment), number)
    assert killed.state == TrialState.RUNNING and killed.intermediate_values

    start_segment(experiment, segment=1)  # within the grace period the trial is left alone
    assert get_trial(load_study(experiment), number).state == TrialState.RUNNING

    _age_heartbeats(stack_env, [killed._trial_id])
    slots = start_segment(experiment, segment=1)
    study = load_study(experiment)
    assert get_trial(study, number).state == TrialState.FAIL
    (retry,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert retry.params == killed.params and retry.system_attrs["failed_trial"] == number
    assert count_trials(study).consumed == 0 and slots == [0, 1, 2], "a retried failure costs no budget"

    while slots:  # the rest of the experiment, lane after lane
        _lane(experiment, folder, slot=slots[0], segment=1)
        slots = start_segment(experiment, segment=1)
    study = load_study(experiment)
    counts = count_trials(study)
    assert (counts.complete, counts.failed, counts.retried, counts.running, counts.waiting) == (3, 1, 1, 0, 0)
    rerun = get_trial(study, retry.number)
    assert rerun.state == TrialState.COMPLETE and rerun.params == killed.params
    assert rerun.system_attrs["retry_history"] == [number]
    assert not finish_segment(experiment, segment=1).go_on


# --------------------------------------------------------------------------------------------
# 2. The whole `kubetune run` killed mid-segment


def _cli_env(stack_env: dict, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "MLFLOW_", "AWS_"))}
    return {**env, **stack_env, "KUBETUNE_HOME": str(home), "COLUMNS": "200"}


def test_a_killed_run_resumes_without_losing_or_duplicating_anything(tmp_path, stack_env):
    name = f"killed-run-{secrets.token_hex(3)}"
    spec_path = tmp_path / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(_document(name, max_trials=3, lanes=2)))
    env = _cli_env(stack_env, tmp_path / "home")
    command = [sys.executable, "-m", "kubetune.cli", "run", str(spec_path)]
    storage = stack_env["KUBETUNE_STORAGE"]

    with open(tmp_path / "first.log", "w") as log:
        # Its own session, so that the kill takes the runner and every step process it started.
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        completed: dict[int, float] = {}
        while not completed:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial completed in time"
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            except KeyError:  # the study does not exist yet
                continue
            completed = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)

    study = optuna.load_study(study_name=name, storage=storage)
    completed = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    running = [t._trial_id for t in study.trials if t.state == TrialState.RUNNING]
    assert completed and len(completed) < 3, "killed mid-segment"
    # Every trial a lane took holds a heartbeat (the suggest step records the first), so a killed one
    # goes stale; see the module docstring for why the heartbeats are aged instead of waited for.
    assert set(running) <= _heartbeat_trial_ids(stack_env)
    _age_heartbeats(stack_env, running)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Traceback" not in second.stderr

    study = optuna.load_study(study_name=name, storage=storage)
    assert {t.number: t.value for t in study.trials if t.number in completed} == completed
    by_state = {state: [t for t in study.trials if t.state == state] for state in TrialState}
    assert len(by_state[TrialState.COMPLETE]) + len(by_state[TrialState.PRUNED]) == 3, "the budget, exactly"
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in by_state[TrialState.FAIL]} == retried == {
        t.number for t in study.trials if t._trial_id in running}
    assert study.user_attrs["stop_reason"].startswith("maxTrials reached")

    client = MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name = '{name}'")
    assert versions, "the best model is registered"
    assert len({v.run_id for v in versions}) == len(versions), "no trial registered twice"
    assert len({v.tags["kubetune.trial"] for v in versions}) == len(versions)
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["kubetune.trial"] == str(study.best_trial.number)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.`kubetune.role` = 'trial'")
    logged = [int(r.data.tags["kubetune.trial"]) for r in runs]
    assert len(logged) == len(set(logged)), "no trial logged twice"


# --------------------------------------------------------------------------------------------
# 3. PostgreSQL restarted mid-search


def lane_process(spec: str, slot: int, folder: str, out: str) -> None:
    os.environ["KUBETUNE_TRAIN_THREADS"] = "1"
    from kubetune.study import plan_slots

    experiment = parse_experiment(json.loads(spec))
    told, error = [], None
    try:
        while plan_slots(load_study(experiment), experiment):
            told.append(_lane(experiment, Path(folder), slot=slot)["number"])
    except BaseException:
        error = traceback.format_exc()
    Path(out).write_text(json.dumps({"told": told, "error": error}))


def test_lanes_reconnect_after_a_postgres_restart(folder, postgres, stack_env):
    budget, lanes = 8, 2
    experiment = _experiment(f"pg-restart-{secrets.token_hex(3)}", max_trials=budget, lanes=lanes)
    start_segment(experiment, segment=0)
    processes = []
    for slot in range(lanes):
        out = folder / f"lane-{slot}.json"
        process = SPAWN.Process(target=lane_process, args=(experiment.to_json(), slot, str(folder), str(out)))
        process.start()
        processes.append((process, out))
    try:
        deadline = time.monotonic() + 180
        observer = optuna.load_study(study_name=experiment.name, storage=stack_env["KUBETUNE_STORAGE"])
        while len(before := observer.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            assert time.monotonic() < deadline and all(p.is_alive() for p, _ in processes)
            time.sleep(0.1)
        before = {t.number: t.value for t in before}
        assert len(before) < budget, "the restart comes mid-search"
        postgres.restart()
        for process, _ in processes:
            process.join(max(1.0, deadline - time.monotonic()))
            assert not process.is_alive(), "a lane did not finish"
    finally:
        for process, _ in processes:
            if process.is_alive():
                process.kill()
    reports = [json.loads(out.read_text()) for _, out in processes]
    assert [r["error"] for r in reports if r["error"]] == []
    assert all(r["told"] for r in reports), "both lanes worked"

    study = load_study(experiment)
    assert {t.number: t.value for t in study.trials if t.number in before} == before, "nothing completed was lost"
    counts = count_trials(study)
    assert counts.running == 0 and counts.failed == 0
    assert budget <= counts.complete <= budget + lanes - 1
    assert sorted(n for r in reports for n in r["told"]) == [t.number for t in study.trials]


# --------------------------------------------------------------------------------------------
# 4. The S3 server or the MLflow server down when the best model is registered


def _register_with(experiment: Experiment, folder: Path, monkeypatch, stack_env, stop, start, endpoint: str):
    from kubetune.registry import register_best
    from kubetune.tracking import TrackingError

    start_segment(experiment, segment=0)
    _lane(experiment, folder)
    monkeypatch.setenv("KUBETUNE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("KUBETUNE_RETRY_BACKOFF_SECONDS", "0.2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one request per attempt: a shorter test
    client = MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    stop()
    try:
        began = time.monotonic()
        with pytest.raises(TrackingError) as caught:
            register_best(experiment)
        took = time.monotonic() - began
    finally:
        start()
    message = str(caught.value)
    assert endpoint in message and "after 2 attempts" in message, message
    assert took < 90, f"bounded: {took:.0f} s"
    for secret in (stack_env["AWS_SECRET_ACCESS_KEY"], _password(stack_env)):
        assert secret not in message
    assert "\n" not in message
    assert client.search_model_versions(f"name = '{experiment.model_name}'") == []

    first = register_best(experiment)
    again = register_best(experiment)
    assert first["registered"] and (again["version"], again["trial"]) == (first["version"], first["trial"])
    versions = client.search_model_versions(f"name = '{experiment.model_name}'")
    assert [int(v.version) for v in versions] == [first["version"]], "registered exactly once"
    assert client.get_model_version_by_alias(experiment.model_name, "champion").version == str(first["version"])


def _password(stack_env: dict) -> str:
    from sqlalchemy.engine import make_url

    return make_url(stack_env["KUBETUNE_STORAGE"]).password


def test_registration_while_s3_is_down_retries_then_registers_once(folder, monkeypatch, stack_env, s3):
    experiment = _experiment(f"s3-down-{secrets.token_hex(3)}", max_trials=1)
    _register_with(experiment, folder, monkeypatch, stack_env, s3.stop, s3.start, stack_env["MLFLOW_TRACKING_URI"])


def test_registration_while_mlflow_is_down_retries_then_registers_once(folder, monkeypatch, stack_env, mlflow_server):
    experiment = _experiment(f"mlflow-down-{secrets.token_hex(3)}", max_trials=1)
    _register_with(experiment, folder, monkeypatch, stack_env, mlflow_server.stop, mlflow_server.start,
                   mlflow_server.uri)


# --------------------------------------------------------------------------------------------
# 5. Divergence and out-of-memory


def test_diverged_and_out_of_memory_trials_fail_alone(folder, monkeypatch):
    import torch

    from kubetune import train

    experiment = _experiment(f"bad-trials-{secrets.token_hex(3)}", max_trials=4, epochs=2, parameters={
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    })
    start_segment(experiment, segment=0)
    with pytest.warns(UserWarning, match="out of range"):  # Optuna warns about the enqueued lr, as it should
        load_study(experiment).enqueue_trial({"lr": 1e20, "optimizer": "sgd"})  # diverges in the first epoch
        diverged = _lane(experiment, folder, slot=0)

    real_epoch = train._train_epoch

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train, "_train_epoch", out_of_memory)
    oom = _lane(experiment, folder, slot=1)
    monkeypatch.setattr(train, "_train_epoch", real_epoch)
    assert finish_segment(experiment, segment=0).go_on, "two failures do not end the experiment"
    rest = [_lane(experiment, folder, slot=slot, segment=1) for slot in range(2)]

    study = load_study(experiment)
    assert [diverged["state"], oom["state"]] == ["FAIL", "FAIL"]
    assert "nan" in get_trial(study, diverged["number"]).user_attrs["reason"]
    assert "out of memory" in get_trial(study, oom["number"]).user_attrs["reason"]
    assert [r["state"] for r in rest] == ["COMPLETE", "COMPLETE"]
    counts = count_trials(study)
    assert (counts.complete, counts.failed, counts.consumed) == (2, 2, 4)
    client = MlflowClient()
    failed_runs = [client.get_run(get_trial(study, r["number"]).user_attrs["mlflow_run_id"]) for r in (diverged, oom)]
    assert [run.data.tags["kubetune.state"] for run in failed_runs] == ["FAIL", "FAIL"]
    assert [run.info.status for run in failed_runs] == ["FAILED", "FAILED"]
