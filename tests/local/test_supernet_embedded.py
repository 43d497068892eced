"""strategy.oneShot and sampler darts through a real `kubetune run`: the search-supernet step trains real
supernets on digits once per study (two segments here), then the lanes train what it proposed."""

from __future__ import annotations

import copy
import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_cell_search import TINY_CELL
from test_embedded_run import _mlflow, _run


def _search(tmp_path_factory, name: str, strategy: dict):
    spec = copy.deepcopy(TINY_CELL)
    spec["metadata"]["name"] = name
    spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    spec["spec"]["strategy"] = strategy
    spec["spec"]["budget"] = {"maxTrials": 4, "parallelTrials": 2, "trialsPerSegment": 2}
    folder = tmp_path_factory.mktemp(name)
    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    result = _run(spec_path, folder / "home")
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'home' / 'optuna.db'}")
    return folder / "home", study


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    strategy = {"sampler": {"name": "random", "seed": 0}, "oneShot": {"topK": 3, "candidates": 10, "epochs": 1}}
    return _search(tmp_path_factory, "tiny-one-shot", strategy)


@pytest.fixture(scope="module")
def darts(tmp_path_factory):
    return _search(tmp_path_factory, "tiny-darts", {"sampler": {"name": "darts", "seed": 0, "epochs": 1}})


def _trials(study):
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    return trials


def test_the_first_trials_are_the_supernets_top_k_and_the_sampler_follows(one_shot):
    _, study = one_shot
    summary = study.user_attrs["supernet"]
    assert summary["strategy"] == "oneShot"
    assert [(s["cells"], s["width"], s["scored"]) for s in summary["supernets"]] == [(1, 8, 10), (2, 8, 10)]
    enqueued = [entry["code"] for entry in summary["enqueued"]]
    assert len(set(enqueued)) == 3 and [entry["rank"] for entry in summary["enqueued"]] == [1, 1, 2]
    trials = _trials(study)
    assert [t.user_attrs["architecture_code"] for t in trials[:3]] == enqueued
    assert [t.user_attrs["suggested_by"]["code"] for t in trials[:3]] == enqueued
    assert "suggested_by" not in trials[3].user_attrs  # the random sampler's own
    assert len({t.params["lr"] for t in trials}) == 4  # hyperparameters stay the sampler's to choose


def test_the_supernet_work_runs_once_and_is_on_the_parent_mlflow_run(one_shot):
    home, study = one_shot
    assert study.user_attrs["segment"] == 2
    logs = {path.name: path.read_text() for path in (home / "logs").glob("tiny-one-shot-segment-*.log")}
    assert "supernet 2 of 2" in logs["tiny-one-shot-segment-0.log"]
    assert "already done" in logs["tiny-one-shot-segment-1.log"]
    client = _mlflow(home)
    experiment = client.get_experiment_by_name("tiny-one-shot")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kubetune.role") == "parent"]
    assert parent.data.tags["kubetune.supernet"] == "oneShot"
    stored = client.download_artifacts(parent.info.run_id, "supernet.json", str(home))
    assert json.loads(open(stored).read())["enqueued"] == study.user_attrs["supernet"]["enqueued"]
    ranked = [r for r in runs if r.data.tags.get("kubetune.suggestedBy.strategy") == "oneShot"]
    assert len(ranked) == 3


def test_every_darts_trial_trains_a_derived_cell_recorded_as_dartss(darts):
    home, study = darts
    cells = study.user_attrs["supernet"]["cells"]
    assert [(c["search"], c["frame"]) for c in cells] == [(0, "c1w8"), (1, "c2w8")]  # one search per frame
    for trial in _trials(study):
        cell = cells[trial.number % 2]
        assert trial.user_attrs["architecture_code"] == cell["code"]
        assert trial.user_attrs["suggested_by"] == {
            "strategy": "darts",
            **{key: cell[key] for key in ("search", "frame", "seed", "code")},
        }
    client = _mlflow(home)
    experiment = client.get_experiment_by_name("tiny-darts")
    tagged = client.search_runs([experiment.experiment_id], "tags.`kubetune.suggestedBy.strategy` = 'darts'")
    assert len(tagged) == 4
