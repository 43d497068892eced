"""A study opened as ``grpc://host:port``: Optuna's real gRPC proxy in this process, on a SQLite study.

The proxy's own process, PostgreSQL behind it and lanes across a proxy restart are in
tests/services/test_storage_proxy.py.
"""

from __future__ import annotations

import socket
import threading
import time

import optuna
import pytest
from free_ports import free_port_and_next
from optuna.storages._grpc.server import make_server  # Optuna internal: the server kubetune.storage_proxy runs
from optuna.trial import TrialState

from kubetune import storage_proxy
from kubetune.devstack.process import HOST, free_port
from kubetune.grpc_storage import ProxiedStorage
from kubetune.spec import parse_experiment
from kubetune.storage import StudyError, open_database, open_storage
from kubetune.study import ensure_study, load_study, seconds_until_stale, tell_once


@pytest.fixture
def experiment(minimal_spec):
    return parse_experiment(minimal_spec)


def _serve(database: str, port: int):
    server = make_server(optuna.storages.get_storage(open_database(database, batch_params=False)), HOST, port)
    server.start()
    return server


def test_a_proxy_that_starts_late_is_waited_for_and_the_study_works_through_it(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "20")
    port = free_port()
    database = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(experiment, f"grpc://{HOST}:{port}")
    assert isinstance(storage, ProxiedStorage)
    servers = []
    late = threading.Timer(1.0, lambda: servers.append(_serve(database, port)))
    late.start()
    try:
        began = time.monotonic()
        study = ensure_study(experiment, storage=storage)  # its first call finds no proxy yet
        assert time.monotonic() - began >= 0.9
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        assert seconds_until_stale(study) == pytest.approx(3 * experiment.spec.trial.heartbeat_seconds, abs=5)
        assert tell_once(study, trial.number, state=TrialState.COMPLETE, values=[0.9])
        assert not tell_once(
            load_study(experiment, storage=storage), trial.number, state=TrialState.COMPLETE, values=[0.1]
        )
    finally:
        late.join()
        for server in servers:
            server.stop(None)
    (stored,) = optuna.load_study(study_name=experiment.name, storage=database).trials
    assert stored.value == 0.9 and "lr" in stored.params, "the parameter and the one tell reached the database"


def test_a_proxy_that_stays_away_is_reported_in_one_line(experiment, monkeypatch):
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "0.5")
    url = f"grpc://{HOST}:{free_port()}"
    with pytest.raises(StudyError, match=rf"{url} did not answer for 0.5 s \(gRPC UNAVAILABLE\)"):
        ensure_study(experiment, storage=open_storage(experiment, url))


@pytest.mark.parametrize("url", ["grpc://proxy", "grpc://:13000", "grpc://proxy:port", "grpc://proxy:0"])
def test_a_malformed_proxy_address_names_the_form(experiment, url):
    with pytest.raises(StudyError, match="write grpc://HOST:PORT"):
        open_storage(experiment, url)


@pytest.mark.parametrize("url", [None, "grpc://proxy:13000", "sqlite:///optuna.db"])
def test_the_proxy_refuses_a_url_that_is_not_a_database_server(url, monkeypatch, capsys):
    if url is None:
        monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    else:
        monkeypatch.setenv("KUBETUNE_STORAGE", url)
    assert storage_proxy.main(["--port", str(free_port())]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: KUBETUNE_STORAGE must be the PostgreSQL") and "\n" == message[-1]
    assert message.count("\n") == 1


@pytest.mark.parametrize("taken", ["storage", "suggest"])
def test_a_proxy_port_in_use_is_one_clear_error_and_nothing_stays_bound(taken, tmp_path):
    from kubetune.errors import UserError
    from kubetune.suggest_client import suggest_port

    port = free_port_and_next()
    blocked = port if taken == "storage" else suggest_port(port)
    with socket.socket() as holder:
        holder.bind((HOST, blocked))
        holder.listen()
        with pytest.raises(UserError) as raised:
            storage_proxy.serve(f"sqlite:///{tmp_path / 'optuna.db'}", HOST, port)
    assert str(raised.value).startswith(f"--port {port}: the proxy listens on {HOST}:{port}")
    assert f"cannot listen on {HOST}:{blocked} (Address already in use)" in str(raised.value)
    for free in (port, suggest_port(port)):  # the suggest service that started first was stopped
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((HOST, free))
