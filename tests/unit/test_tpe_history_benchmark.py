"""benchmarks/tpe_history.py: regret is compared with unbounded tpe pair by pair; the cost part times every cell."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import import_scripts


@pytest.fixture
def tpe_history(monkeypatch):
    """The script as a module; benchmarks/ goes on sys.path because it imports its siblings by name."""
    (script,) = import_scripts(monkeypatch, "tpe_history")
    return script


def _curve(*regrets):
    return [{"regret": r} for r in regrets]


def test_a_window_is_judged_against_unbounded_tpe_at_each_budget(tpe_history):
    curves = {
        "tpe": [_curve(0.3, 0.2), _curve(0.3, 0.1)],
        tpe_history.label(50): [_curve(0.3, 0.0), _curve(None, 0.2)],
    }
    summary = tpe_history.quality_summary(curves, [1, 2])
    assert "beats_tpe" not in summary["tpe"][2]
    window = summary["tpe/h50"]
    assert window[1]["beats_tpe"] == 0.5 and window[1]["without_incumbent"] == 1  # a tie; one run had none yet
    assert window[2]["beats_tpe"] == 0.625  # 0.0 beats both, 0.2 ties one and loses one: (2 + 0.5) / 4
    assert window[2]["mean"] == pytest.approx(0.1)


def test_the_cost_part_times_each_size_with_and_without_the_window(tpe_history, tmp_path, capsys):
    options = ["--parts", "cost", "--sizes", "60", "--asks", "2", "--window", "50", "--results", str(tmp_path)]
    assert tpe_history.main(options) == 0
    rows = json.loads((tmp_path / "tpe_history.json").read_text())["results"]["cost"]
    assert [(r["size"], r["history"], r["asks"]) for r in rows] == [(60, None, 2), (60, 50, 2)]
    assert all(len(r["seconds"]) == 2 and r["first_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
    assert "p50 ms" in capsys.readouterr().out
