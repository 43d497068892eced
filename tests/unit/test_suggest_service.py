"""The suggest service survives being killed at any write of an ask: its retried request leaves one trial.

The service tests (tests/services/test_storage_proxy.py) kill a real proxy at a random moment; here the
kill falls on each of the ask's writes in turn, on a SQLite study, with the storage the proxy uses.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from kubetune.spec import parse_experiment
from kubetune.storage import open_database
from kubetune.study import ensure_study
from kubetune.suggest_service import REQUEST_ATTR, Suggester

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

WRITES = (
    "create_new_trial",
    "set_trial_state_values",
    "set_trial_system_attr",
    "set_trial_param",
    "set_trial_user_attr",
    "record_heartbeat",
)


class Killed(BaseException):
    """The process died here: nothing after this write happens (not an Exception, so nothing handles it)."""


def _kill_at_write(monkeypatch, database, at: int) -> list[str]:
    """Make the database's ``at``-th write raise Killed (counting from 0); returns the writes made so far."""
    made: list[str] = []
    for name in WRITES:
        method = getattr(database, name)

        def write(*args, _method=method, _name=name, **kwargs):
            if len(made) == at:
                raise Killed(_name)
            made.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(database, name, write)
    return made


@pytest.fixture
def experiment(minimal_spec):
    minimal_spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    return parse_experiment(minimal_spec)


@pytest.mark.parametrize("enqueued", [False, True], ids=["new-trial", "enqueued-trial"])
def test_a_request_killed_at_any_write_is_retried_into_one_trial(experiment, tmp_path, monkeypatch, enqueued):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = ensure_study(experiment, storage=open_database(url))
    if enqueued:  # a warm-start pick or a retried trial waits in the queue: the ask pops it
        study.enqueue_trial({"lr": 0.01})
    spec = experiment.to_json()
    kills = 0
    while True:
        database = open_database(url, batch_params=False)
        made = _kill_at_write(monkeypatch, database, kills)
        try:
            Suggester(optuna.storages.get_storage(database)).suggest(spec, segment=0, slot=0, request=f"r{kills}")
        except Killed:
            pass
        else:
            break  # this ask made all its writes: every earlier one was killed somewhere
        monkeypatch.undo()
        restarted = Suggester(optuna.storages.get_storage(open_database(url, batch_params=False)))
        number, _ = restarted.suggest(spec, segment=0, slot=0, request=f"r{kills}")
        trials = optuna.load_study(study_name=experiment.name, storage=url).trials
        running = [t for t in trials if t.state == TrialState.RUNNING]
        assert [t.number for t in running] == [number], f"killed at write {kills} ({made}): one running trial"
        assert running[0].system_attrs[REQUEST_ATTR] == f"r{kills}" and running[0].params
        assert not [t for t in trials if t.state == TrialState.WAITING], "no trial left waiting"
        if enqueued:
            assert running[0].params == {"lr": 0.01}, "the retry trained the enqueued trial"
        study.tell(number, 0.5)  # the next ask starts from a study with nothing running
        if enqueued:
            study.enqueue_trial({"lr": 0.01})
        kills += 1
    assert kills >= 3, f"an ask writes more than a few times: {made}"
