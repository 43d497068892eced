"""benchmarks/study_scale.py at a tiny size on real PostgreSQL: the fill, the cold steps, the lanes' integrity check."""

from __future__ import annotations

import secrets

import optuna
import pytest
from benchmark_scripts import import_scripts
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from repo_paths import DIGITS

from kubetune import devstack


@pytest.fixture
def scale(monkeypatch):
    """The script as a module; benchmarks/ goes on sys.path (and so the spawned steps') for its helpers."""
    (script,) = import_scripts(monkeypatch, "study_scale")
    return script


def _study(postgres: devstack.Postgres, scale, size: int) -> tuple[str, str, dict]:
    url = postgres.create_database(f"scale_{secrets.token_hex(4)}")
    name = f"scale-{size}"
    return url, name, scale.filled_study(url, scale.scale_experiment(str(DIGITS), name), size)


def test_the_fill_writes_finished_trials_as_kubetune_records_them_once(postgres, scale):
    url, name, fill = _study(postgres, scale, 50)
    assert (fill["trials"], fill["added"]) == (50, 50)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert sorted(t.number for t in trials) == list(range(50))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    for trial in trials:
        assert {"lr", "optimizer", "batchSize", "arch.blocks"} <= set(trial.params)
        assert {"hyperparameters", "architecture", "architecture_code", "fidelity"} <= set(trial.user_attrs)
        assert sorted(trial.intermediate_values) == list(range(1, 11))
    assert len({t.user_attrs["architecture_code"] for t in trials}) > 10, "the templates differ"
    again = scale.filled_study(url, scale.scale_experiment(str(DIGITS), name), 50)
    assert (again["trials"], again["added"]) == (50, 0), "a filled study is reused, not filled again"


def test_a_reused_study_loses_the_trials_an_interrupted_run_left_open(postgres, scale):
    """Otherwise an ask would take a waiting retry's parameters and time no sampling."""
    url, name, _ = _study(postgres, scale, 20)
    study = optuna.load_study(study_name=name, storage=url)
    study.ask()
    study.enqueue_trial({"lr": 0.01})
    again = scale.filled_study(url, scale.scale_experiment(str(DIGITS), name), 20)
    assert again["leftovers_failed"] == 2
    states = [t.state for t in optuna.load_study(study_name=name, storage=url).get_trials()]
    assert states.count(TrialState.FAIL) == 2 and TrialState.WAITING not in states and TrialState.RUNNING not in states


def test_cold_steps_time_every_phase_and_tell_their_trial(postgres, scale):
    url, name, _ = _study(postgres, scale, 30)
    cell = scale.cold_steps(str(DIGITS), name, url, repeats=2)
    assert set(cell) == {*scale.PHASES, "suggest"}
    for phase in cell.values():
        assert len(phase["samples_s"]) == 2 and all(s > 0 for s in phase["samples_s"])
        assert phase["p50_ms"] <= phase["p99_ms"]
    phases = [sum(cell[p]["samples_s"][i] for p in scale.SUGGEST) for i in range(2)]
    assert cell["suggest"]["samples_s"] == pytest.approx(phases)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 32 and {t.state for t in trials} == {TrialState.COMPLETE}
    new = [t for t in trials if t.number >= 30]
    assert all(t.user_attrs["run"] == f"{name}-bench" and "architecture" in t.user_attrs for t in new)


def test_cold_steps_through_the_grpc_proxy(postgres, scale):
    url, name, _ = _study(postgres, scale, 20)
    with scale.grpc_proxy(url) as port:
        cell = scale.cold_steps(str(DIGITS), name, f"grpc:{port}", repeats=1)
    assert len(cell["suggest"]["samples_s"]) == 1
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 21 and trials[-1].state == TrialState.COMPLETE


def test_cold_steps_and_lanes_through_kubetune_suggest_service(postgres, scale):
    url, name, _ = _study(postgres, scale, 20)
    with scale.reach(url, "service") as where:
        warm_s = scale.warm_up(str(DIGITS), where, name)
        cell = scale.cold_steps(str(DIGITS), name, where, repeats=2)
    assert warm_s > 0 and set(cell) == set(scale.SERVICE_PHASES)
    assert all(len(phase["samples_s"]) == 2 for phase in cell.values())
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 23 and {t.state for t in trials} == {TrialState.COMPLETE}, "the warm-up's and both steps'"
    assert all("kubetune:suggest_request" in t.system_attrs for t in trials[20:]), "the service asked them"
    lanes_url = postgres.create_database(f"lanes_{secrets.token_hex(4)}")
    with scale.reach(lanes_url, "service") as where:
        result = scale.concurrent_lanes(lanes_url, str(DIGITS), where, lanes=2, quota=2, train_seconds=0.0)
    assert result["failed_lanes"] == [] and result["integrity"]["trials"] == 4
    assert scale.is_clean(result["integrity"])


def test_concurrent_lanes_lose_duplicate_and_double_tell_nothing(postgres, scale):
    url = postgres.create_database(f"lanes_{secrets.token_hex(4)}")
    result = scale.concurrent_lanes(url, str(DIGITS), url, lanes=2, quota=3, train_seconds=0.0)
    assert result["integrity"]["trials"] == 6 and scale.is_clean(result["integrity"])
    assert result["failed_lanes"] == []
    assert len(result["suggest"]["samples_s"]) == len(result["tell"]["samples_s"]) == 6
    assert result["trials_per_s"] > 0 and result["lanes"] == 2


def _trial(number: int, state: TrialState = TrialState.COMPLETE):
    frozen = create_trial(
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
    )
    frozen.number = number
    return frozen


def test_the_integrity_check_names_each_kind_of_fault(scale):
    clean = scale.integrity([_trial(0), _trial(1)], [{"asked": [0], "told": [0]}, {"asked": [1], "told": [1]}])
    assert scale.is_clean(clean)
    broken = scale.integrity(
        [_trial(0), _trial(0), _trial(1, TrialState.RUNNING), _trial(2), _trial(3)],
        [{"asked": [0, 1, 2], "told": [0, 1, 0]}, {"asked": [2], "told": []}],
    )
    assert not scale.is_clean(broken)
    assert broken["duplicate_numbers"] == 1  # two trials numbered 0
    assert broken["told_twice"] == 1  # trial 0
    assert broken["asked_twice"] == 1  # trial 2
    assert broken["asked_not_told"] == 1  # trial 2
    assert broken["lost"] == 1  # trial 1 was told but is not complete
    assert broken["unknown"] == 1  # trial 3 is complete but no lane asked it
    assert broken["not_complete"] == 1
