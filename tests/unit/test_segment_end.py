"""The end of a segment is one seam: the core decides and records, then calls the "submit next" it is given.

The cluster's implementation is tested against the KFP double (tests/cluster), the local runner's through
real kfp.local runs (tests/local); here the core runs with a recording implementation, and the local
one hands the next segment to the runner's inbox.
"""

import json

import pytest

from kubetune import local
from kubetune.segments import finish_segment, run_name, start_segment
from kubetune.spec import parse_experiment
from kubetune.steps import INBOX_ENV
from kubetune.study import load_study


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI", INBOX_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _experiment(minimal_spec, **budget):
    minimal_spec["spec"]["budget"] = {"maxTrials": 10, "trialsPerSegment": 2, **budget}
    experiment = parse_experiment(minimal_spec)
    start_segment(experiment, segment=0)
    return experiment


class Recorder:
    """A "submit next" that records what it was asked to start and answers with a run id."""

    def __init__(self, answer: str | None = "run-1") -> None:
        self.calls: list[tuple[str, int]] = []
        self.answer = answer

    def __call__(self, experiment, segment: int) -> str | None:
        self.calls.append((experiment.name, segment))
        return self.answer


def test_going_on_starts_the_next_segment_once_even_when_the_step_runs_again(minimal_spec):
    experiment = _experiment(minimal_spec)
    submit_next = Recorder()
    first = finish_segment(experiment, segment=0, submit_next=submit_next)
    again = finish_segment(experiment, segment=0, submit_next=submit_next)
    assert first.go_on and again.go_on
    assert submit_next.calls == [(experiment.name, 1)]
    attrs = load_study(experiment).user_attrs
    assert attrs[f"submitted:{run_name(experiment, 1)}"] == "run-1"
    assert attrs["segment"] == 1 and "stop_reason" not in attrs


def test_stopping_starts_nothing_and_records_why(minimal_spec):
    experiment = _experiment(minimal_spec, maxSegments=1)
    submit_next = Recorder()
    decision = finish_segment(experiment, segment=0, submit_next=submit_next)
    assert not decision.go_on and submit_next.calls == []
    attrs = load_study(experiment).user_attrs
    assert attrs["stop_reason"] == decision.reason == "maxSegments reached (1)"
    assert not any(key.startswith("submitted:") for key in attrs)


def test_a_submission_that_fails_is_not_recorded_so_a_rerun_submits(minimal_spec):
    experiment = _experiment(minimal_spec)

    def unreachable(experiment, segment):
        raise ConnectionError("KFP API away")

    with pytest.raises(ConnectionError):
        finish_segment(experiment, segment=0, submit_next=unreachable)
    submit_next = Recorder()
    assert finish_segment(experiment, segment=0, submit_next=submit_next).go_on
    assert submit_next.calls == [(experiment.name, 1)]


def test_an_implementation_with_nothing_to_record_leaves_no_submitted_record(minimal_spec):
    experiment = _experiment(minimal_spec)
    finish_segment(experiment, segment=0, submit_next=Recorder(answer=None))
    assert not any(key.startswith("submitted:") for key in load_study(experiment).user_attrs)


def test_the_local_end_hands_the_next_segment_to_the_runner(minimal_spec, tmp_path, monkeypatch):
    experiment = _experiment(minimal_spec)
    inbox = tmp_path / "inbox.jsonl"
    monkeypatch.setenv(INBOX_ENV, str(inbox))
    assert local.finish_segment(experiment, segment=0).go_on
    assert [json.loads(line) for line in inbox.read_text().splitlines()] == [{"kind": "next", "segment": 1}]


def test_the_local_end_hands_nothing_on_when_the_experiment_stops(minimal_spec, tmp_path, monkeypatch):
    experiment = _experiment(minimal_spec, maxSegments=1)
    inbox = tmp_path / "inbox.jsonl"
    monkeypatch.setenv(INBOX_ENV, str(inbox))
    assert not local.finish_segment(experiment, segment=0).go_on
    assert not inbox.exists()
