"""Meta-learning through real `kubetune run`s: two small experiments fill the study database, `kubetune meta
fit` learns from them, and a third experiment with strategy.warmStart starts with the model's picks."""

from __future__ import annotations

import copy

import optuna
import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _cli, _run


def _spec(tmp_path, name: str, strategy: dict, trials: int):
    spec = copy.deepcopy(TINY)
    spec["metadata"]["name"] = name
    spec["spec"]["strategy"] = strategy
    spec["spec"]["budget"] = {"maxTrials": trials, "parallelTrials": 2, "trialsPerSegment": trials}
    spec["spec"]["trial"] = {"epochs": 1}
    spec["spec"]["registry"] = {"modelName": f"{name}-model"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_warm_started_experiment_begins_with_the_meta_models_picks(tmp_path):
    home = tmp_path / "home"
    for index in range(2):
        past = _spec(tmp_path, f"past-{index}", {"sampler": {"name": "random", "seed": index}}, trials=10)
        result = _run(past, home)
        assert result.returncode == 0, result.stdout + result.stderr

    fitted = _cli(home, "meta", "fit")
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert "learned from 20 completed trials of 2 experiments" in fitted.stdout
    assert "registered kubetune-meta version 1" in fitted.stdout

    warm = {"sampler": {"name": "tpe", "seed": 0}, "warmStart": {"source": "meta", "trials": 2, "candidates": 50}}
    result = _run(_spec(tmp_path, "warm", warm, trials=3), home)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{home / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs.get("warm_start") for t in trials] == ["kubetune-meta/1", "kubetune-meta/1", None]
    summary = study.user_attrs["warm_start"]
    assert [entry["params"] for entry in summary["enqueued"]] == [trials[0].params, trials[1].params]
    assert "enqueued the best 2 of 50 candidates scored by kubetune-meta/1" in summary["message"]
