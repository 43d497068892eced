"""Faults that must leave nothing lost, against the real PostgreSQL, S3 and MLflow servers.

1. a trainer killed with SIGKILL mid-trial: failed after the heartbeat grace period, retried, and
   the experiment still ends with the requested number of completed trials;
2. the whole ``kubetune run`` killed mid-segment and started again: it resumes without losing or
   duplicating anything;
3. PostgreSQL restarted mid-search: the lanes reconnect and go on, and heartbeats never wait for it;
4. the S3 server or the MLflow server down when the best model is registered: bounded retries, a
   clear error naming the endpoint, and exactly one registration once it is back;
5. a trial that diverges (NaN loss) or runs out of memory fails alone; the search goes on.

Waiting out the real grace period (3 x heartbeatSeconds, at least 15 s) would only slow the tests
down, so where a test needs a trial to be stale it moves its recorded heartbeat an hour back in the
database; that is exactly what the clock would have done.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from lanes import (
    SPAWN,
    artifact_paths,
    one_lane,
    restart_mid_search,
    run_lanes,
    small_document,
    small_experiment,
)
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from kubetune import tracking
from kubetune.data import load_split, save_split
from kubetune.segments import finish_segment, start_segment
from kubetune.spec import Experiment, parse_experiment
from kubetune.stop_rules import count_trials
from kubetune.storage import open_storage
from kubetune.study import beat, ensure_study, get_trial, heartbeat, load_study


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

    train_trial(
        parse_experiment(json.loads(spec)),
        number=number,
        split_path=str(Path(folder) / "split.npz"),
        **artifact_paths(Path(folder), number),
    )


def test_a_killed_trainer_is_failed_after_the_grace_period_and_retried(folder, stack_env):
    experiment = small_experiment(f"killed-trainer-{secrets.token_hex(3)}", max_trials=3, epochs=20)
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
        one_lane(experiment, folder, slot=slots[0], segment=1)
        slots = start_segment(experiment, segment=1)
    study = load_study(experiment)
    counts = count_trials(study)
    assert (counts.complete, counts.failed, counts.retried, counts.running, counts.waiting) == (3, 1, 1, 0, 0)
    rerun = get_trial(study, retry.number)
    assert rerun.state == TrialState.COMPLETE and rerun.params == killed.params
    assert rerun.system_attrs["retry_history"] == [number]
    assert not finish_segment(experiment, segment=1, submit_next=lambda experiment, segment: None).go_on


# --------------------------------------------------------------------------------------------
# 2. The whole `kubetune run` killed mid-segment


def _cli_env(stack_env: dict, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "MLFLOW_", "AWS_"))}
    return {**env, **stack_env, "KUBETUNE_HOME": str(home), "COLUMNS": "200"}


def test_a_killed_run_resumes_without_losing_or_duplicating_anything(tmp_path, stack_env):
    name = f"killed-run-{secrets.token_hex(3)}"
    spec_path = tmp_path / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(small_document(name, max_trials=3, lanes=2)))
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
    assert (
        {t.number for t in by_state[TrialState.FAIL]}
        == retried
        == {t.number for t in study.trials if t._trial_id in running}
    )
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


def test_lanes_reconnect_after_a_postgres_restart(folder, postgres, stack_env):
    budget, lanes = 8, 2
    experiment = small_experiment(f"pg-restart-{secrets.token_hex(3)}", max_trials=budget, lanes=lanes)
    start_segment(experiment, segment=0)
    before: dict[int, float] = {}

    during = restart_mid_search(experiment, stack_env["KUBETUNE_STORAGE"], postgres.restart, before)

    reports = run_lanes(experiment, folder, lanes, during=during, timeout=180)
    assert all(r["told"] for r in reports), "both lanes worked"

    study = load_study(experiment)
    assert {t.number: t.value for t in study.trials if t.number in before} == before, "nothing completed was lost"
    counts = count_trials(study)
    assert counts.running == 0 and counts.failed == 0
    assert budget <= counts.complete <= budget + lanes - 1
    assert sorted(n for r in reports for n in r["told"]) == [t.number for t in study.trials]


def _last_beat(stack_env: dict, trial_id: int):
    with psycopg.connect(_postgres_url(stack_env)) as connection:
        return connection.execute("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = %s", (trial_id,)).fetchone()[
            0
        ]


def test_heartbeats_never_block_while_postgres_is_down(postgres, stack_env, monkeypatch):
    """A beat during an outage fails at once (it is not retried) and the trainer leaves heartbeat() at once;
    once the server is back, the next beat is recorded."""
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "30")
    experiment = small_experiment(f"pg-beat-{secrets.token_hex(3)}")
    study = ensure_study(experiment, storage=open_storage(experiment, stack_env["KUBETUNE_STORAGE"]))
    trial = study.ask()
    assert beat(study, trial.number)
    try:
        with heartbeat(study, trial.number, interval=0.2):
            postgres.stop()
            began = time.monotonic()
            assert not beat(study, trial.number)
            assert time.monotonic() - began < 5, "a beat waited for the database"
            time.sleep(1)  # the heartbeat thread beats into the outage meanwhile
            began = time.monotonic()
        left = time.monotonic() - began
    finally:
        postgres.start()
    assert left < 5, f"leaving heartbeat() waited {left:.1f} s for the database"
    before = _last_beat(stack_env, trial._trial_id)
    deadline = time.monotonic() + 30
    while not beat(study, trial.number):
        assert time.monotonic() < deadline, "no beat after the restart"
        time.sleep(0.2)
    assert _last_beat(stack_env, trial._trial_id) > before


# --------------------------------------------------------------------------------------------
# 4. The S3 server or the MLflow server down when the best model is registered


def _register_with(experiment: Experiment, folder: Path, monkeypatch, stack_env, stop, start, endpoint: str):
    from kubetune.registry import register_best
    from kubetune.tracking import TrackingError

    start_segment(experiment, segment=0)
    one_lane(experiment, folder)
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
    experiment = small_experiment(f"s3-down-{secrets.token_hex(3)}", max_trials=1)
    _register_with(experiment, folder, monkeypatch, stack_env, s3.stop, s3.start, stack_env["MLFLOW_TRACKING_URI"])


def test_registration_while_mlflow_is_down_retries_then_registers_once(folder, monkeypatch, stack_env, mlflow_server):
    experiment = small_experiment(f"mlflow-down-{secrets.token_hex(3)}", max_trials=1)
    _register_with(
        experiment, folder, monkeypatch, stack_env, mlflow_server.stop, mlflow_server.start, mlflow_server.uri
    )


# --------------------------------------------------------------------------------------------
# 5. Divergence and out-of-memory


def test_diverged_and_out_of_memory_trials_fail_alone(folder, monkeypatch):
    import torch

    from kubetune import train

    experiment = small_experiment(
        f"bad-trials-{secrets.token_hex(3)}",
        max_trials=4,
        epochs=2,
        parameters={
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
    )
    start_segment(experiment, segment=0)
    with pytest.warns(UserWarning, match="out of range"):  # Optuna warns about the enqueued lr, as it should
        load_study(experiment).enqueue_trial({"lr": 1e20, "optimizer": "sgd"})  # diverges in the first epoch
        diverged = one_lane(experiment, folder, slot=0)

    real_epoch = train._train_epoch

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train, "_train_epoch", out_of_memory)
    oom = one_lane(experiment, folder, slot=1)
    monkeypatch.setattr(train, "_train_epoch", real_epoch)
    assert finish_segment(experiment, segment=0, submit_next=lambda experiment, segment: None).go_on, (
        "two failures do not end the experiment"
    )
    rest = [one_lane(experiment, folder, slot=slot, segment=1) for slot in range(2)]

    study = load_study(experiment)
    assert [diverged["state"], oom["state"]] == ["FAIL", "FAIL"]
    assert "nan" in get_trial(study, diverged["number"]).user_attrs["reason"]
    assert "out of memory" in get_trial(study, oom["number"]).user_attrs["reason"]
    assert [r["state"] for r in rest] == ["COMPLETE", "COMPLETE"]
    counts = count_trials(study)
    assert (counts.complete, counts.failed, counts.consumed) == (2, 2, 4)
    client = tracking.client()
    failed_runs = [client.get_run(get_trial(study, r["number"]).user_attrs["mlflow_run_id"]) for r in (diverged, oom)]
    assert [run.data.tags["kubetune.state"] for run in failed_runs] == ["FAIL", "FAIL"]
    assert [run.info.status for run in failed_runs] == ["FAILED", "FAILED"]
