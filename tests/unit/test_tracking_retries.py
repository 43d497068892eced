"""kubetune.tracking's retry policy: transient MLflow errors are retried with doubling waits, others are not."""

from __future__ import annotations

import logging
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from kubetune.tracking import TrackingError, with_retries


@pytest.fixture
def waits(monkeypatch):
    """The waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:S3cr3t-pw@mlflow.example:5000")
    monkeypatch.delenv("KUBETUNE_RETRY_ATTEMPTS", raising=False)
    monkeypatch.delenv("KUBETUNE_RETRY_BACKOFF_SECONDS", raising=False)
    return recorded


def _failing(times: int, error: Exception):
    calls = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return action, calls


def test_transient_errors_are_retried_with_doubling_waits(waits, caplog):
    action, calls = _failing(2, ConnectionError("refused"))
    with caplog.at_level(logging.WARNING, logger="kubetune.tracking"):
        assert with_retries(action, what="logging trial 3") == "done"
    assert len(calls) == 3 and waits == [2.0, 4.0]
    assert "logging trial 3 failed (attempt 1 of 5, retrying in 2.0 s): ConnectionError: refused" in caplog.text


def test_the_last_attempt_names_the_attempts_the_wait_and_the_uri_without_its_password(waits):
    action, calls = _failing(99, ConnectionError("refused"))
    with pytest.raises(TrackingError) as caught:
        with_retries(action, what="logging trial 3")
    message = str(caught.value)
    assert len(calls) == 5 and waits == [2.0, 4.0, 8.0, 16.0]
    assert "logging trial 3 failed after 5 attempts over 30.0 s: ConnectionError: refused" in message
    assert "MLflow at http://***@mlflow.example:5000" in message and "S3cr3t-pw" not in message


def test_the_environment_sets_attempts_and_backoff(waits, monkeypatch):
    monkeypatch.setenv("KUBETUNE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("KUBETUNE_RETRY_BACKOFF_SECONDS", "50")
    action, _ = _failing(99, TimeoutError("slow"))
    with pytest.raises(TrackingError, match=r"after 3 attempts over 110\.0 s"):
        with_retries(action, what="x")
    assert waits == [50.0, 60.0]  # capped at MAX_BACKOFF_SECONDS


def test_a_permanent_error_is_not_retried(waits):
    action, calls = _failing(1, MlflowException("bad name", error_code=INVALID_PARAMETER_VALUE))
    with pytest.raises(TrackingError, match="registering failed: MlflowException: bad name"):
        with_retries(action, what="registering")
    assert len(calls) == 1 and waits == []


def test_a_tracking_error_passes_through_unretried(waits):
    action, calls = _failing(1, TrackingError("already explained"))
    with pytest.raises(TrackingError) as caught:
        with_retries(action, what="x")
    assert len(calls) == 1 and "already explained" in str(caught.value)


def test_one_attempt_says_so(waits, monkeypatch):
    monkeypatch.setenv("KUBETUNE_RETRY_ATTEMPTS", "1")
    action, _ = _failing(1, ConnectionError("refused"))
    with pytest.raises(TrackingError, match="x failed after 1 attempt: ConnectionError"):
        with_retries(action, what="x")
