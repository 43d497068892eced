"""The study through Optuna's gRPC storage proxy (``python -m kubetune.storage_proxy``) on the real PostgreSQL.

The proxy is a real server process; the steps reach the study with ``KUBETUNE_STORAGE=grpc://...``
as they do in the cluster when the chart's storageProxy is enabled. As in test_faults.py, a test that
needs a stale trial moves its recorded heartbeat an hour back instead of waiting for the clock.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from free_ports import free_port_and_next
from lanes import one_lane, restart_mid_search, run_lanes, small_experiment
from optuna.trial import TrialState

from kubetune.data import load_split, save_split
from kubetune.devstack.process import HOST, ServerProcess
from kubetune.grpc_storage import HEARTBEAT_ATTR, ProxiedStorage
from kubetune.redaction import redact_url
from kubetune.segments import start_segment
from kubetune.stop_rules import count_trials
from kubetune.storage import open_storage
from kubetune.study import beat, ensure_study, get_trial, heartbeat, load_study, tell_once
from kubetune.suggest_client import suggest_port


class Proxy:
    """The storage proxy in a process of its own; ``kill()`` is SIGKILL, ``start()`` reuses the port."""

    def __init__(self, database_url: str, folder: Path) -> None:
        self.database_url = database_url
        self.port = free_port_and_next()
        self.url = f"grpc://{HOST}:{self.port}"
        self.process = ServerProcess(
            "storage proxy",
            [sys.executable, "-m", "kubetune.storage_proxy", "--host", HOST, "--port", str(self.port)],
            log_path=folder / "proxy.log",
            env={**os.environ, "KUBETUNE_STORAGE": database_url},
            stop_signal=signal.SIGKILL,
        )

    def _listening(self) -> bool:
        """Both ports: the storage port opens last, but a proxy that failed after opening it would pass alone."""
        for port in (self.port, suggest_port(self.port)):
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) != 0:
                    return False
        return True

    def start(self) -> None:
        self.process.start()
        self.process.wait_until(self._listening, timeout=60, port=self.port)

    def kill(self) -> None:
        self.process.stop()


@pytest.fixture
def proxy(tmp_path: Path, use_stack_env, monkeypatch):
    """A running proxy on this test's fresh study database; the test's KUBETUNE_STORAGE points at it."""
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "1")
    save_split(load_split({"source": "builtin:digits"}), tmp_path / "split.npz")
    server = Proxy(use_stack_env["KUBETUNE_STORAGE"], tmp_path)
    server.start()
    monkeypatch.setenv("KUBETUNE_STORAGE", server.url)
    yield server
    server.kill()


def test_a_lane_asks_tells_and_beats_through_the_proxy(proxy, tmp_path):
    experiment = small_experiment(f"proxy-lane-{secrets.token_hex(3)}")
    start_segment(experiment, segment=0)
    assert isinstance(load_study(experiment)._storage, ProxiedStorage)
    report = one_lane(experiment, tmp_path)

    direct = optuna.load_study(study_name=experiment.name, storage=proxy.database_url)
    (trial,) = direct.trials
    assert trial.number == report["number"] and trial.state == TrialState.COMPLETE
    assert trial.params and trial.value is not None, "parameters and value reached PostgreSQL"
    assert HEARTBEAT_ATTR in trial.system_attrs, "the trainer beat through the proxy"
    assert not tell_once(load_study(experiment), trial.number, state=TrialState.COMPLETE, values=[0.5])
    assert direct.trials[0].value == trial.value, "a second tell changed nothing"
    log = (tmp_path / "proxy.log").read_text()
    assert f"serving {redact_url(proxy.database_url)} on {proxy.url.split('//')[1]}" in log
    assert _password(proxy.database_url) not in log
    shown = subprocess.run(  # the read-only commands open grpc:// too
        [sys.executable, "-m", "kubetune.cli", "status", experiment.name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"trials\s+.*1 of 3 done", shown.stdout), shown.stdout


def _password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def test_a_trial_that_stops_beating_is_failed_and_retried(proxy):
    experiment = small_experiment(f"proxy-stale-{secrets.token_hex(3)}")
    study = ensure_study(experiment)
    quiet, beating = study.ask(), study.ask()
    assert beat(study, quiet.number) and beat(study, beating.number)
    with heartbeat(study, beating.number, interval=0.2):
        time.sleep(0.5)
        ensure_study(experiment)  # within the grace period nothing is failed
        assert count_trials(load_study(experiment)).running == 2
        study._storage.set_trial_system_attr(quiet._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
        ensure_study(experiment)
    study = load_study(experiment)
    assert get_trial(study, quiet.number).state == TrialState.FAIL
    assert get_trial(study, beating.number).state == TrialState.RUNNING, "a beating trial is left alone"
    (retry,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert retry.system_attrs["failed_trial"] == quiet.number


def test_a_beat_while_the_proxy_is_down_fails_at_once(proxy, monkeypatch):
    monkeypatch.setenv("KUBETUNE_DB_RETRY_SECONDS", "30")
    experiment = small_experiment(f"proxy-beat-{secrets.token_hex(3)}")
    study = ensure_study(experiment, storage=open_storage(experiment))
    trial = study.ask()
    assert beat(study, trial.number)
    proxy.kill()
    began = time.monotonic()
    assert not beat(study, trial.number)
    assert time.monotonic() - began < 5, "a beat waited for the proxy"
    proxy.start()
    deadline = time.monotonic() + 5  # the client's reconnection backoff is at most 1 s
    while not beat(study, trial.number):  # a beat is not retried: the next one finds the proxy back
        assert time.monotonic() < deadline, "no beat after the proxy restarted"
        time.sleep(0.2)


def test_lanes_wait_out_a_proxy_restart_and_lose_nothing(proxy, tmp_path):
    budget, lanes = 8, 2
    experiment = small_experiment(f"proxy-restart-{secrets.token_hex(3)}", max_trials=budget, lanes=lanes)
    start_segment(experiment, segment=0)
    before: dict[int, float] = {}

    def restart() -> None:
        proxy.kill()
        time.sleep(1.0)  # the lanes' calls meanwhile find no proxy and wait
        proxy.start()

    during = restart_mid_search(experiment, proxy.database_url, restart, before)
    reports = run_lanes(experiment, tmp_path, lanes, during=during, timeout=180)
    assert all(r["told"] for r in reports), "both lanes worked"

    study = optuna.load_study(study_name=experiment.name, storage=proxy.database_url)
    assert {t.number: t.value for t in study.trials if t.number in before} == before, "nothing completed was lost"
    counts = count_trials(study)
    assert counts.running == 0 and counts.failed == 0
    assert budget <= counts.complete <= budget + lanes - 1
    told = sorted(n for r in reports for n in r["told"])
    assert told == [t.number for t in study.trials], "every trial told once, none twice"
    assert all(t.params for t in study.trials), "no trial lost its parameters"


def _ask(proxy: Proxy, experiment, request: str, *, slot: int = 0) -> int:
    """One raw request to the proxy's suggest service, as a suggest step sends it."""
    import grpc

    from kubetune.suggest_client import METHOD, decode, encode, suggest_url

    message = encode({"spec": experiment.to_json(), "segment": 0, "slot": slot, "request": request})
    with grpc.insecure_channel(suggest_url(proxy.url).split("//")[1]) as channel:
        return decode(channel.unary_unary(METHOD)(message, timeout=60))["number"]


def test_suggest_steps_are_asked_by_the_proxy_process(proxy, tmp_path):
    from kubetune.search import suggest_trial
    from kubetune.suggest_service import REQUEST_ATTR

    experiment = small_experiment(f"proxy-suggest-{secrets.token_hex(3)}", max_trials=6, lanes=2)
    start_segment(experiment, segment=0)
    numbers = [suggest_trial(experiment, segment=0, slot=slot) for slot in (0, 1)]
    assert len(set(numbers)) == 2
    direct = optuna.load_study(study_name=experiment.name, storage=proxy.database_url)
    for number, slot in zip(numbers, (0, 1), strict=True):
        trial = direct.trials[number]
        assert trial.state == TrialState.RUNNING and trial.params, "asked and sampled"
        assert trial.user_attrs["slot"] == slot and "hyperparameters" in trial.user_attrs
        assert REQUEST_ATTR in trial.system_attrs, "the proxy's suggest service asked it"
    idle = load_study(experiment)._storage.idle_seconds(direct._study_id)  # as ensure-study sees it, via the proxy
    assert sorted(idle) == sorted(t._trial_id for t in direct.trials) and max(idle.values()) < 60
    assert "suggest service on" in (tmp_path / "proxy.log").read_text()


def test_a_repeated_suggest_request_gets_its_first_trial(proxy):
    from kubetune.study import tag_trial
    from kubetune.suggest_service import REQUEST_ATTR

    experiment = small_experiment(f"proxy-retry-{secrets.token_hex(3)}", max_trials=6)
    study = ensure_study(experiment)
    first = _ask(proxy, experiment, "request-a")
    assert _ask(proxy, experiment, "request-a") == first, "a retried request is not a second trial"
    assert _ask(proxy, experiment, "request-b") != first
    # A request cut short after the ask (the proxy died): its retry finishes recording that trial.
    cut = study.ask()
    tag_trial(study, cut.number, REQUEST_ATTR, "request-c")
    assert _ask(proxy, experiment, "request-c", slot=1) == cut.number
    trial = get_trial(load_study(experiment), cut.number)
    assert trial.params and trial.user_attrs["slot"] == 1 and "hyperparameters" in trial.user_attrs
    assert len(load_study(experiment).trials) == 3


def test_suggest_through_the_proxy_reports_errors_and_stop_rules(proxy, capsys):
    from kubetune.search import NO_TRIAL, suggest_trial
    from kubetune.storage import StudyError

    missing = small_experiment(f"proxy-missing-{secrets.token_hex(3)}")
    with pytest.raises(StudyError, match="does not exist yet; run the ensure-study step first"):
        suggest_trial(missing, segment=0, slot=0)
    experiment = small_experiment(f"proxy-stop-{secrets.token_hex(3)}", max_trials=1)
    study = ensure_study(experiment)
    study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}), 0.5)
    assert suggest_trial(experiment, segment=0, slot=0) == NO_TRIAL
    assert "no new trial in slot 0: " in capsys.readouterr().out


def test_many_suggest_steps_at_once_each_get_a_trial(proxy):
    from concurrent.futures import ThreadPoolExecutor

    from kubetune.search import suggest_trial

    steps = 24
    experiment = small_experiment(f"proxy-many-{secrets.token_hex(3)}", max_trials=steps, lanes=steps)
    start_segment(experiment, segment=0)
    with ThreadPoolExecutor(steps) as pool:  # more at once than the service has threads
        numbers = list(pool.map(lambda slot: suggest_trial(experiment, segment=0, slot=slot), range(steps)))
    assert sorted(numbers) == list(range(steps))
    assert count_trials(load_study(experiment)).running == steps
