"""The cluster overhead model adds what a trial's pods and processes cost, and shares them with trialsPerPod."""

from __future__ import annotations

import pytest
from benchmark_scripts import import_scripts


@pytest.fixture
def bench(monkeypatch):
    (script,) = import_scripts(monkeypatch, "cluster_overhead")
    return script


def test_one_trial_per_pod_pays_eight_pods_three_start_ups_and_the_study_read(bench):
    found = bench.model(
        {"suggest-trial": 1.0, "train-trial": 3.0, "evaluate-trial": 2.0}, pod_start=5.0, study_read=2.0
    )
    assert found["overhead_seconds"] == pytest.approx(8 * 5 + 6 + 2)
    assert found["share"][1] == pytest.approx(48 / (48 + 60))


def test_trials_per_pod_share_the_pods_and_the_start_up(bench):
    found = bench.model({"run-trials": 4.0}, pod_start=5.0, study_read=2.0, per_pod=4)
    assert found["overhead_seconds"] == pytest.approx((3 * 5 + 4) / 4 + 2)
    assert found["share"][30] < found["share"][5] < found["share"][1]


def test_a_fresh_process_start_up_is_timed(bench):
    found = bench.start_up("pass", 2)
    assert len(found["seconds"]) == 2 and 0 < found["min"] <= found["median"] <= found["max"]
