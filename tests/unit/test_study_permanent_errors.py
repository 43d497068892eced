"""A full disk or a read-only database file is reported at once, not waited for like a restarting server;
and a study names its objectives by their metrics from its creation (optuna-dashboard shows them)."""

import sqlite3

import pytest

from kubetune.spec import parse_experiment
from kubetune.storage import is_transient, open_storage
from kubetune.study import ensure_study


@pytest.mark.parametrize(
    "message",
    [
        "database or disk is full",
        "attempt to write a readonly database",
        'could not extend file "base/16384/2619": No space left on device',
    ],
)
def test_a_full_disk_or_read_only_database_is_not_retried(message):
    assert not is_transient(sqlite3.OperationalError(message))


def test_a_locked_database_is_still_retried():
    assert is_transient(sqlite3.OperationalError("database is locked"))


def test_a_new_study_names_its_objectives_by_their_metrics(tmp_path, digits_spec):
    data = digits_spec
    data["spec"]["objective"] = [
        {"metric": "val_accuracy", "direction": "maximize"},
        {"metric": "params", "direction": "minimize"},
    ]
    data["spec"]["strategy"] = {"sampler": {"name": "nsga2", "seed": 0}, "pruner": {"name": "none"}}
    experiment = parse_experiment(data)
    study = ensure_study(experiment, storage=open_storage(experiment, f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert study.metric_names == ["val_accuracy", "params"]
