"""The supernet ranking benchmark measures honestly: tau and regret against the table, random search's budget."""

from __future__ import annotations

import pytest
from benchmark_scripts import import_scripts

CODES = [f"cell:n1:c{c}:w16:r1:{op}" for c in (1, 2) for op in ("conv3", "conv1", "skip", "zero")]


@pytest.fixture
def bench(monkeypatch):
    (script,) = import_scripts(monkeypatch, "supernet_ranking")
    return script


@pytest.fixture
def table(bench):
    """Test accuracy falls along CODES; final validation accuracy follows it; every training costs 1 + 2 s."""
    records = [
        {"code": code, "seed": seed, "status": "complete", "val_accuracy": [0.5, 0.9 - i / 100]}
        | {"seconds": [1.0, 2.0], "test_accuracy": 0.9 - i / 100 + seed / 1000}
        for i, code in enumerate(CODES)
        for seed in (0, 1)
    ]
    return bench.Table({"epochs": 2}, records)


def test_a_perfect_ranking_has_tau_one_and_no_regret_and_a_reversed_one_the_opposite(bench, table):
    perfect = bench.ranking(table, {code: -i for i, code in enumerate(CODES)})
    assert perfect["tau_test"] == pytest.approx(1.0) and perfect["tau_val"] == pytest.approx(1.0)
    assert perfect["top1_regret"] == 0 and perfect["top5_regret"] == 0 and perfect["top5_seconds"] == 15.0
    assert set(perfect["tau_test_within_frame"]) == {"c1w16", "c2w16"}
    reversed_ = bench.ranking(table, {code: i for i, code in enumerate(CODES)})
    assert reversed_["tau_test"] == pytest.approx(-1.0)
    assert reversed_["top1_regret"] == pytest.approx(0.07)
    # strategy.oneShot's pick: round-robin over each frame's own ranking, so the 1-cell frame's best comes second
    assert perfect["top5_per_frame"] == [CODES[0], CODES[4], CODES[1], CODES[5], CODES[2]]
    assert perfect["top5_per_frame_regret"] == 0
    assert reversed_["top5_per_frame"] == [CODES[7], CODES[3], CODES[6], CODES[2], CODES[5]]
    assert reversed_["top5_per_frame_regret"] == pytest.approx(0.02)
    assert reversed_["top5_regret"] == pytest.approx(0.03)  # of the worst five, the best by validation


def test_random_search_trains_only_what_the_seconds_pay_for(bench, table):
    assert bench.random_search(table, 2.9, seed=0)["without_incumbent"] == bench.RANDOM_REPEATS
    result = bench.random_search(table, 9.0, seed=0)
    assert result["mean_trials"] == 3 and result["without_incumbent"] == 0
    assert all(0 <= regret <= 0.07 + 1e-9 for regret in result["regrets"])


def test_tpe_at_equal_seconds_replays_kubetunes_sampler_within_the_seconds(bench, table):
    table.header |= {
        "data": {"source": "builtin:digits"},
        "space": {
            "type": "cell",
            "nodes": 1,
            "operations": {"choices": ["conv3", "conv1", "skip", "zero"]},
            "cells": {"low": 1, "high": 2},
            "width": {"choices": [16]},
            "reductions": 1,
        },
    }
    assert bench.tpe_search(table, 2.9, seed=0)["without_incumbent"] == bench.RANDOM_REPEATS
    result = bench.tpe_search(table, 30.0, seed=0)
    assert result["without_incumbent"] == 0
    assert all(0 <= regret <= 0.07 + 1e-9 for regret in result["regrets"])
    assert result["mean_regret"] < 0.07  # ten trainings of eight architectures find better than the worst
