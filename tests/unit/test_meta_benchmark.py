"""The warm-start benchmark measures honestly: regret against the pool's best, the picks taken first."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import import_scripts


@pytest.fixture
def bench(monkeypatch):
    (script,) = import_scripts(monkeypatch, "meta_warm_start")
    return script


def test_regret_is_the_pools_best_minus_the_best_found_so_far_with_the_picks_first(bench):
    values = np.linspace(0.0, 1.0, 30)  # configuration 29 is the best
    cold = bench.regrets(values, [], seed=0)
    assert cold[20] <= cold[10] <= cold[5] and all(0.0 <= r <= 1.0 for r in cold.values())
    warm = bench.regrets(values, [29, 0], seed=0)
    assert warm == {5: 0.0, 10: 0.0, 20: 0.0}
    assert bench.regrets(values, [0, 1, 2, 3, 4], seed=0)[5] == pytest.approx(1.0 - 4 / 29)


def test_the_splits_are_stratified_and_standardised_on_the_training_rows(bench):
    x, y = bench._sets()["iris"]
    split = bench._split(x, y)
    assert len(split.y_train) == 90 and len(split.y_val) == len(split.y_test) == 30
    assert np.bincount(split.y_val).tolist() == [10, 10, 10]
    assert np.allclose(split.x_train.mean(axis=0), 0.0, atol=1e-5) and split.input_shape == (4,)
