"""Step bodies run in-process, or in forks of the warm step server that `kubetune run` starts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.data import load_split, save_split
from kubetune.search import suggest_trial
from kubetune.segments import start_segment
from kubetune.spec import parse_experiment
from kubetune.steps import INBOX_ENV, SERVER_ENV, StepFailed, call
from kubetune.stepserver import serving
from kubetune.study import get_trial, load_study


def _spec(minimal_spec, **trial) -> str:
    minimal_spec["spec"]["trial"] = {"epochs": 2, **trial}
    minimal_spec["spec"]["strategy"] = {"sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}}
    return json.dumps(minimal_spec)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("server") / "step-server.log") as path:
        yield path


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _server_pid(path: str) -> int:
    """The server is the only child of this test process listening on ``path``."""
    pids = [pid for pid in _children(os.getpid()) if path in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(pids) == 1
    return pids[0]


def test_without_a_server_the_body_runs_in_the_step_process(minimal_spec, monkeypatch):
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "3")
    assert call("search.train_threads", _spec(minimal_spec), step="train-trial") == 3


def test_the_server_runs_the_body_with_the_callers_environment(minimal_spec, server, monkeypatch):
    monkeypatch.setenv(SERVER_ENV, server)
    for threads in ("2", "5"):
        monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", threads)
        assert call("search.train_threads", _spec(minimal_spec), step="train-trial") == int(threads)


@pytest.mark.parametrize("through_server", [False, True], ids=["in-process", "server"])
def test_a_dataclass_result_crosses_as_a_dict_wherever_it_ran(
    minimal_spec, server, tmp_path, monkeypatch, through_server
):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(SERVER_ENV, raising=False)
    spec = _spec(minimal_spec)
    start_segment(parse_experiment(json.loads(spec)), segment=0)
    if through_server:
        monkeypatch.setenv(SERVER_ENV, server)
    decision = call("local.finish_segment", spec, step="next-segment", segment=0)
    assert decision == {"go_on": True, "reason": decision["reason"]} and isinstance(decision["reason"], str)


def test_a_failing_body_fails_the_step_and_leaves_its_traceback_in_the_steps_log(
    minimal_spec, server, monkeypatch, capfd
):
    monkeypatch.setenv(SERVER_ENV, server)
    with pytest.raises(StepFailed, match=r"AttributeError: .*no_such_function"):
        call("search.no_such_function", _spec(minimal_spec), step="train-trial")
    assert "Traceback" in capfd.readouterr().err  # written by the fork to this process's own stderr


def _through(server, monkeypatch) -> None:
    """The step hands its body to ``server``, or runs it itself when there is none."""
    if server:
        monkeypatch.setenv(SERVER_ENV, server)
    else:
        monkeypatch.delenv(SERVER_ENV, raising=False)


def _handed(inbox) -> list[dict]:
    return [json.loads(line) for line in inbox.read_text().splitlines()]


@pytest.mark.parametrize("through_server", [False, True], ids=["in-process", "server"])
def test_a_failure_reaches_the_runner_as_data_with_its_step_and_trial(
    minimal_spec, server, tmp_path, monkeypatch, through_server
):
    inbox = tmp_path / "inbox.jsonl"
    monkeypatch.setenv(INBOX_ENV, str(inbox))
    _through(server if through_server else None, monkeypatch)
    with pytest.raises(StepFailed if through_server else AttributeError, match="no_such_function"):
        call("search.no_such_function", _spec(minimal_spec), step="train-trial", number=7)
    assert _handed(inbox) == [
        {
            "kind": "failure",
            "step": "train-trial",
            "trial": 7,
            "type": "AttributeError",
            "user_error": False,
            "message": "module 'kubetune.search' has no attribute 'no_such_function'",
        }
    ]


@pytest.mark.parametrize("through_server", [False, True], ids=["in-process", "server"])
def test_a_user_mistake_inside_a_step_is_marked_as_one(minimal_spec, server, tmp_path, monkeypatch, through_server):
    inbox = tmp_path / "inbox.jsonl"
    monkeypatch.setenv(INBOX_ENV, str(inbox))
    _through(server if through_server else None, monkeypatch)
    minimal_spec["spec"]["data"] = {"source": f"file://{tmp_path}/nowhere.npz"}
    with pytest.raises(Exception, match="does not exist"):
        call("data.retrieve", json.dumps(minimal_spec), step="retrieve-data", path=str(tmp_path / "split.npz"))
    (record,) = _handed(inbox)
    assert record["user_error"] and record["type"] == "DataError" and record["step"] == "retrieve-data"
    assert record["trial"] is None and "nowhere.npz does not exist" in record["message"]


def test_without_a_runner_a_failing_step_writes_nowhere_and_still_fails(minimal_spec, tmp_path, monkeypatch):
    """In a cluster no runner waits: the step fails as before, and nothing is written."""
    monkeypatch.delenv(INBOX_ENV, raising=False)
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "not-a-number")
    with pytest.raises(ValueError, match="not-a-number"):
        call("search.train_threads", _spec(minimal_spec), step="train-trial")
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_is_gone_fails_the_step_with_where_to_look(minimal_spec, tmp_path, monkeypatch):
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "gone.sock"))
    monkeypatch.setenv(INBOX_ENV, str(tmp_path / "inbox.jsonl"))
    with pytest.raises(StepFailed, match=r"gone\.sock is not answering .*step-server\.log"):
        call("search.train_threads", _spec(minimal_spec), step="train-trial")
    (record,) = _handed(tmp_path / "inbox.jsonl")
    assert record["type"] == "StepFailed" and not record["user_error"] and "gone.sock" in record["message"]


def test_a_killed_step_stops_its_training_in_the_server(minimal_spec, server, tmp_path, monkeypatch):
    """Like a trial pod that dies: its fork stops training, and the trial's heartbeats stop with it."""
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "1")
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(minimal_spec, epochs=10_000)
    experiment = parse_experiment(json.loads(spec))
    start_segment(experiment, segment=0)
    number = suggest_trial(experiment, segment=0, slot=0)
    save_split(load_split({"source": "builtin:digits"}), tmp_path / "split.npz")
    arguments = dict(
        number=number,
        split_path=str(tmp_path / "split.npz"),
        model_path=str(tmp_path / "model.pt"),
        predictions_path=str(tmp_path / "predictions.npz"),
    )
    step = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, json; from kubetune.steps import call; "
            "call('search.train_trial', sys.argv[1], step='train-trial', **json.loads(sys.argv[2]))",
            spec,
            json.dumps(arguments),
        ],
        env={**os.environ, SERVER_ENV: server},
    )
    server_pid = _server_pid(server)

    def epochs_reported() -> int:
        return len(get_trial(load_study(experiment), number).intermediate_values)

    deadline = time.monotonic() + 60
    while epochs_reported() < 2:
        assert time.monotonic() < deadline and step.poll() is None, "training did not start in the server"
        time.sleep(0.2)
    assert len(_children(server_pid)) == 1
    step.send_signal(signal.SIGKILL)
    step.wait()
    deadline = time.monotonic() + 10
    while _children(server_pid):
        assert time.monotonic() < deadline, "the fork kept training after its step died"
        time.sleep(0.1)
    stopped_at = epochs_reported()
    time.sleep(1.0)
    assert epochs_reported() == stopped_at


def test_what_the_server_preloads_starts_no_thread_and_is_frozen_for_its_forks():
    code = (
        "import gc, threading; from kubetune.stepserver import preload; "
        "preload(); print(threading.active_count(), gc.get_freeze_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    threads, frozen = int(out[0]), int(out[1])
    assert threads == 1  # forking is safe
    assert frozen > 100_000  # torch, Optuna and MLflow's objects: a fork's collections skip them
