"""Meta-learning on real SQLite studies: featurise their trials, fit, score, register in a real MLflow store."""

import math

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from test_search import _experiment as lane_experiment

from kubetune import meta, meta_store
from kubetune.cli import cli
from kubetune.meta_features import FEATURES, architecture_summary, features
from kubetune.spec import parse_experiment

PROFILE = {"rows": 1797, "features": 64, "classes": 10, "class_balance": 0.9, "input_shape": [1, 8, 8], "source": "x"}
BLOCK = {"kind": "conv", "width": 16}


def _experiment(name: str, direction: str = "maximize"):
    """test_search's experiment, its objective in ``direction``."""
    data = lane_experiment(name).to_dict()
    data["spec"]["objective"] = [{"metric": "val_accuracy", "direction": direction}]
    return parse_experiment(data)


def quality(lr: float) -> float:
    """A made-up response: best at lr = 10^-2.5, worse the further away on a log scale."""
    return 0.95 - 0.1 * (math.log10(lr) + 2.5) ** 2


def _fill(storage: str, name: str, *, trials: int, seed: int, profile=PROFILE, direction="maximize") -> None:
    """A study as kubetune leaves it: spec and data profile, completed trials with their recorded attributes."""
    experiment = _experiment(name, direction)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    study.set_user_attr("spec", experiment.to_dict())
    if profile is not None:
        study.set_user_attr("data_profile", profile)
    study.set_user_attr("versions", {"torch": "2.5.0", "optuna": "5.0.0", "numpy": "2"})
    rng = np.random.default_rng(seed)
    for lr in 10 ** rng.uniform(-4, -1, size=trials):
        value = quality(lr) + rng.normal(0, 0.01)
        study.add_trial(
            create_trial(
                params={"lr": lr},
                distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                value=value if direction == "maximize" else 1 - value,
                user_attrs={
                    "hyperparameters": {"lr": lr, "optimizer": "adam", "batchSize": 64},
                    "architecture": {"blocks": [BLOCK]},
                    "metrics": {"params": 12_345},
                    "hardware": {"device": "cpu"},
                },
            )
        )
    study.add_trial(create_trial(state=TrialState.FAIL))  # never featurised


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_features_have_a_fixed_order_and_length_whatever_the_architecture():
    macro = features({"lr": 1e-3}, {"blocks": [BLOCK, {"kind": "mlp", "width": 64}]}, PROFILE, params=100, epochs=4)
    cell = {
        "type": "cell",
        "nodes": 2,
        "edges": [["conv3"], ["skip", "zero"]],
        "cells": 2,
        "width": 16,
        "reductions": 1,
    }
    celled = features({"lr": 1e-2, "optimizer": "sgd"}, cell, PROFILE, params=10, epochs=4, device="cuda")
    assert list(macro) == list(celled) == FEATURES
    assert macro["log10_lr"] == pytest.approx(-3) and macro["optimizer_adam"] == 1 and macro["optimizer_sgd"] == 0
    assert macro["depth"] == 2 and macro["kind_conv"] == macro["kind_mlp"] == 0.5 and macro["kernel_mean"] == 3
    assert macro["log10_rows"] == pytest.approx(math.log10(1797)) and macro["log2_epochs"] == 2
    assert celled["is_cell"] == 1 and celled["depth"] == 4 and celled["cuda"] == 1
    assert celled["op_skip"] == pytest.approx(1 / 3) and celled["op_conv1"] == 0
    assert architecture_summary(cell)["log2_width_max"] == 4


def test_collect_takes_completed_trials_signed_so_higher_is_better_and_says_what_it_skipped(storage):
    _fill(storage, "up", trials=4, seed=0)
    _fill(storage, "down", trials=3, seed=1, direction="minimize")
    _fill(storage, "old", trials=3, seed=2, profile=None)
    _fill(storage, "other-version", trials=3, seed=3)
    spec = optuna.load_study(study_name="other-version", storage=storage).user_attrs["spec"]
    spec["spec"]["strategy"]["sampler"]["name"] = "future"
    optuna.load_study(study_name="other-version", storage=storage).set_user_attr("spec", spec)
    data = meta.collect(storage)
    assert data.x.shape == (7, len(FEATURES)) and data.studies.count("up") == 4
    assert data.skipped["old"] == "no spec or data profile recorded (created before kubetune recorded them)"
    assert data.skipped["other-version"].startswith("its recorded spec does not parse here: spec.strategy.sampler")
    down = [value for name, value in zip(data.studies, data.y, strict=True) if name == "down"]
    assert all(-1.0 < value < 0.0 for value in down)  # 1 - quality, negated
    assert data.versions["up"] == {"torch": "2.5.0", "optuna": "5.0.0"}


def test_too_few_trials_or_experiments_are_refused_with_what_to_do(storage):
    _fill(storage, "only", trials=25, seed=0)
    with pytest.raises(meta.NotEnoughTrials, match=r"at least 20 completed trials from at least 2 .* 25 from 1"):
        meta.fit(meta.collect(storage))


def test_the_fitted_model_ranks_a_held_out_experiments_configurations(storage):
    for index, rows in enumerate((800, 3000, 20000)):
        _fill(storage, f"s{index}", trials=15, seed=index, profile={**PROFILE, "rows": rows})
    model = meta.fit(meta.collect(storage))
    assert model.summary["trials"] == 45 and model.summary["studies"] == 3 and model.summary["pairs"] == 3 * 15 * 14
    assert model.summary["loso_spearman"] > 0.8, model.summary
    lrs = 10 ** np.linspace(-4, -1, 13)
    candidates = np.array(
        [
            list(features({"lr": lr}, {"blocks": [BLOCK]}, {**PROFILE, "rows": 5000}, params=12_345, epochs=2).values())
            for lr in lrs
        ]
    )
    scores = model.score(candidates)
    assert abs(math.log10(lrs[int(np.argmax(scores))]) + 2.5) <= 0.5  # the best predicted is near the true best
    assert scores[0] < scores[6] and scores[-1] < scores[6]


def test_the_model_is_registered_and_the_latest_version_loads_back(storage, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for index in range(2):
        _fill(storage, f"s{index}", trials=10, seed=index)
    model = meta.fit(meta.collect(storage))
    assert meta_store.latest() is None
    assert meta_store.register(model) == 1 and meta_store.register(model) == 2
    loaded, version = meta_store.latest()
    assert version == 2 and loaded.summary["trials"] == 20
    x = meta.collect(storage).x
    assert np.allclose(loaded.score(x), model.score(x))


def test_meta_fit_refuses_too_few_trials_with_exit_2_and_registers_once_there_are_enough(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _fill(storage, "s0", trials=12, seed=0)
    refused = CliRunner().invoke(cli, ["meta", "fit", "--home", str(tmp_path)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "at least 20 completed trials from at least 2 experiments" in refused.output
    _fill(storage, "s1", trials=12, seed=1)
    _fill(storage, "old", trials=2, seed=2, profile=None)
    fitted = CliRunner().invoke(cli, ["meta", "fit", "--home", str(tmp_path)])
    assert fitted.exit_code == 0, fitted.output
    assert "learned from 24 completed trials of 2 experiments" in fitted.output
    assert "skipped experiment old: no spec or data profile recorded" in fitted.output
    assert "kubetune: registered kubetune-meta version 1" in fitted.output


def test_a_large_study_gives_a_bounded_number_of_pairs_drawn_within_it():
    x = np.arange(2 * 300 * len(FEATURES), dtype=float).reshape(600, len(FEATURES))
    data = meta.MetaData(x=x, y=np.arange(600.0), studies=["a"] * 300 + ["b"] * 300)
    pair_x, pair_y = meta._pairs(data, np.arange(600), seed=0)
    assert 2 * meta.PAIRS_PER_STUDY * 0.9 < len(pair_y) <= 2 * meta.PAIRS_PER_STUDY
    assert np.all(np.abs(pair_y) < 300) and np.all(pair_y != 0)  # never across studies, never a trial with itself
    assert np.allclose(pair_x[:, 0], pair_y * len(FEATURES))
