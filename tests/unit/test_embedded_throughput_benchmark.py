"""benchmarks/embedded_throughput.py: step durations read from kfp.local's segment logs, lanes interleaved."""

from __future__ import annotations

import pytest
from benchmark_scripts import import_scripts

COLOUR = "\x1b[96m"
RESET = "\x1b[0m"


@pytest.fixture
def bench(monkeypatch):
    (script,) = import_scripts(monkeypatch, "embedded_throughput")
    return script


def _start(at: str, name: str) -> str:
    return f"{at} - INFO - Executing task {COLOUR}'{name}'{RESET}\n"


def _end(at: str, name: str) -> str:
    return f"{at} - INFO - Task {COLOUR}'{name}'{RESET} finished with status SUCCESS\n"


def test_interleaved_lanes_give_each_steps_mean_from_start_to_end(bench):
    segment_0 = (
        _start("10:00:00.000", "suggest-trial")
        + _start("10:00:00.100", "suggest-trial")
        + "    [KFP Executor ...]: noise\n"
        + _end("10:00:00.600", "suggest-trial")  # the second lane's, say: pairing does not matter to the mean
        + _end("10:00:00.900", "suggest-trial")
        + _start("10:00:01.000", "train-trial")
        + _end("10:00:03.000", "train-trial")
    )
    segment_1 = _start("10:59:59.500", "suggest-trial") + _end("11:00:00.000", "suggest-trial")
    steps = bench.step_seconds([segment_0, segment_1])
    assert steps["suggest-trial"]["count"] == 3
    assert steps["suggest-trial"]["mean_seconds"] == pytest.approx((0.6 + 0.8 + 0.5) / 3)
    assert steps["train-trial"]["mean_seconds"] == pytest.approx(2.0)
    assert steps["train-trial"]["segments_left_out"] == 0


def test_a_segment_whose_end_line_is_missing_is_left_out_of_that_steps_mean(bench):
    complete = _start("10:00:00.000", "evaluate-trial") + _end("10:00:00.400", "evaluate-trial")
    missing_an_end = (
        _start("10:05:00.000", "evaluate-trial")
        + _start("10:05:01.000", "evaluate-trial")
        + _end("10:05:09.000", "evaluate-trial")  # which lane's? Unknown: pairing would guess
        + _start("10:05:10.000", "register-best")
        + _end("10:05:11.000", "register-best")
    )
    steps = bench.step_seconds([complete, missing_an_end])
    assert steps["evaluate-trial"]["count"] == 1
    assert steps["evaluate-trial"]["mean_seconds"] == pytest.approx(0.4)
    assert steps["evaluate-trial"]["segments_left_out"] == 1
    assert steps["register-best"]["mean_seconds"] == pytest.approx(1.0)
