"""kubetune.storage's retry policy: which errors are waited out, for how long, by whom, and what is said at the end."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from sqlalchemy.exc import OperationalError

from kubetune.spec import parse_experiment
from kubetune.storage import StudyError, describe_error, open_storage

PASSWORD = "Zx9-unlikely-Pw"


def _driver_error(text: str) -> OperationalError:
    """SQLAlchemy's error as it raises it: from the driver's own."""
    cause = sqlite3.OperationalError(text)
    error = OperationalError("SELECT 1", {}, cause)
    error.__cause__ = cause
    return error


def _locked() -> OperationalError:
    return _driver_error("database is locked")


@pytest.fixture
def storage(minimal_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "0.5")
    return open_storage(parse_experiment(minimal_spec), f"sqlite:///{tmp_path / 'optuna.db'}")


def _failing(times: int, error=_locked):
    calls = []

    def method(storage) -> str:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise error()
        return "answered"

    return method, calls


def test_a_database_that_comes_back_is_waited_for(storage, caplog):
    method, calls = _failing(2)
    with caplog.at_level(logging.WARNING, logger="kubetune.storage"):
        assert storage._retried(method) == "answered"
    assert len(calls) == 3
    assert 0.05 * 0.8 <= calls[1] - calls[0]  # backoff, with jitter
    [warning] = caplog.records  # said once per outage, not once per attempt
    assert "unreachable" in warning.getMessage() and "retrying for up to 0.5 s" in warning.getMessage()


def test_an_error_that_waiting_does_not_heal_passes_at_once(storage):
    method, calls = _failing(5, lambda: _driver_error('password authentication failed for user "kt"'))
    with pytest.raises(OperationalError, match="password authentication failed"):
        storage._retried(method)
    assert len(calls) == 1
    method, calls = _failing(5, lambda: ValueError("not a database error"))
    with pytest.raises(ValueError):
        storage._retried(method)
    assert len(calls) == 1


def test_a_database_that_stays_away_is_reported_after_the_deadline(storage):
    method, calls = _failing(10**6)
    began = time.monotonic()
    with pytest.raises(StudyError) as caught:
        storage._retried(method)
    assert 0.5 <= time.monotonic() - began < 1.5  # the last wait is cut to the deadline
    assert len(calls) > 2
    message = str(caught.value)
    assert "did not answer for 0.5 s (OperationalError: database is locked)" in message
    assert "KUBETUNE_DB_RETRY_SECONDS" in message


def test_only_the_outermost_call_retries(storage):
    inner, inner_calls = _failing(1)
    outer_calls = []

    def outer(storage) -> str:
        outer_calls.append(1)
        return storage._retried(inner)

    assert storage._retried(outer) == "answered"
    assert (len(outer_calls), len(inner_calls)) == (2, 2)  # the inner call failed through to the outer


def test_heartbeats_are_not_retried(storage, monkeypatch):
    def record_heartbeat(self, trial_id: int) -> None:
        attempts.append(trial_id)
        raise _locked()

    attempts: list[int] = []
    monkeypatch.setattr("optuna.storages.RDBStorage.record_heartbeat", record_heartbeat)
    with pytest.raises(OperationalError):
        storage.record_heartbeat(7)
    assert attempts == [7]


def test_the_description_of_an_error_names_the_driver_error_without_the_urls_secrets():
    url = f"postgresql+psycopg://kt:{PASSWORD}@db:5432/optuna?sslpassword=Other-Secret-1"
    error = _driver_error(f"connection to db failed:\n  password {PASSWORD} and Other-Secret-1 refused.\n")
    described = describe_error(error, url)
    assert described == "OperationalError: connection to db failed: password *** and *** refused"
