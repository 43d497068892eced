"""The tabular NAS benchmark: the builder resumes without retraining, the replay measures regret honestly."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest
from benchmark_scripts import import_scripts

from kubetune.encoding import encode

EPOCHS = 3
# 8 architectures: 3 edges of 2 operations, one cell count, one width; the all-conv3 cell is clearly best.
SPACE = {
    "type": "cell",
    "nodes": 2,
    "operations": {"choices": ["conv3", "skip"]},
    "cells": {"low": 1, "high": 1},
    "width": {"choices": [16]},
    "reductions": 1,
}
BEST = "cell:n2:c1:w16:r1:conv3|conv3,conv3"


@pytest.fixture
def scripts(monkeypatch):
    """The two scripts as modules; benchmarks/ goes on sys.path because they import its helpers by name."""
    return tuple(import_scripts(monkeypatch, "nas_table", "nas_strategies"))


def _rows(path):
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def test_builder_records_every_field_and_resumes_without_retraining(scripts, tmp_path, monkeypatch):
    nas_table, _ = scripts
    trainings = []

    def counted(*args, **kwargs):
        trainings.append(kwargs["seed"])
        return real(*args, **kwargs)

    real = nas_table.train_model
    monkeypatch.setattr(nas_table, "train_model", counted)
    output = tmp_path / "table.jsonl.gz"
    options = ["--limit", "2", "--epochs", "1", "--seeds", "1", "--output", str(output)]
    assert nas_table.main(options) == 0
    header, *records = _rows(output)
    assert header["header"]["space"] == nas_table.SPACE
    assert header["header"]["epochs"] == 1 and header["header"]["seeds"] == [0]
    [run] = header["header"]["runs"]
    assert run["command"] == "python benchmarks/nas_table.py " + " ".join(options)
    assert set(run["versions"]) >= {"kubetune", "torch", "numpy"}
    first_two = [encode(a) for a in nas_table.architectures(nas_table.SPACE)[:2]]
    assert [r["code"] for r in records] == first_two
    for record in records:
        assert len(record["val_accuracy"]) == 1 and len(record["seconds"]) == 1
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["parameters"] > 0
    assert len(trainings) == 2

    with gzip.open(output, "at") as handle:  # a write torn by a kill
        handle.write('{"code": "cell:')
    assert nas_table.main(options) == 0
    assert len(trainings) == 2, "a rerun trained again what the table already held"
    header, *records = _rows(output)
    assert [r["code"] for r in records] == first_two
    assert len(header["header"]["runs"]) == 2

    assert nas_table.main([*options[:4], "--epochs", "2", "--output", str(output)]) == 2
    assert nas_table.main(["--seeds", "0", "--output", str(output)]) == 2
    assert len(trainings) == 2


def test_the_builder_enumerates_the_whole_space(scripts):
    nas_table, _ = scripts
    codes = {encode(a) for a in nas_table.architectures(nas_table.SPACE)}
    assert len(codes) == 5**3 * 2 * 2


def _synthetic_table(path):
    """Made-up curves: BEST reaches 0.95, every other architecture at most 0.85; two noisy training seeds."""
    rows = [{"header": {"space": SPACE, "epochs": EPOCHS, "seeds": [0, 1], "data": {"source": "builtin:mnist1d"}}}]
    for index, operations in enumerate(itertools.product(["conv3", "skip"], repeat=3)):
        architecture = {"type": "cell", "nodes": 2, "edges": [[operations[0]], list(operations[1:])]}
        code = encode(architecture | {"cells": 1, "width": 16, "reductions": 1})
        final = 0.95 if code == BEST else 0.5 + 0.05 * index
        for seed in (0, 1):
            noise = 0.005 * seed
            curve = [final * 0.6 + noise, final * 0.85 + noise, final + noise]
            rows.append(
                {"code": code, "seed": seed, "status": "complete", "val_accuracy": curve}
                | {"seconds": [1.0, 1.0, 1.0], "test_accuracy": final - noise, "parameters": 100}
            )
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def test_random_search_covering_the_space_has_no_regret(scripts, tmp_path):
    _, nas_strategies = scripts
    table = nas_strategies.load(_synthetic_table(tmp_path / "table.jsonl.gz"))
    for seed in range(5):
        curve = nas_strategies.replay(table, "random", seed=seed, trials=60, seconds=0.0)
        assert curve[-1]["regret"] == 0.0
        assert curve[-1]["seconds"] == 60 * EPOCHS


def test_every_strategy_replays_with_non_negative_regret_and_writes_results(scripts, tmp_path, capsys):
    _, nas_strategies = scripts
    table = _synthetic_table(tmp_path / "table.jsonl.gz")
    results = tmp_path / "results"
    options = ["--table", str(table), "--seeds", "2", "--budgets", "4", "12", "--results", str(results)]
    assert nas_strategies.main(options) == 0
    document = json.loads((results / "nas_strategies-table.json").read_text())["results"]
    assert set(document["curves"]) == set(nas_strategies.STRATEGIES)
    for strategy, runs in document["curves"].items():
        assert len(runs) == 2
        regrets = [point["regret"] for run in runs for point in run if point["regret"] is not None]
        assert regrets, f"{strategy} never completed a trial"
        assert min(regrets) >= 0.0
        assert document["summary"][strategy]["trials"]["12"]["runs"] == 2
        if strategy != "random":
            assert 0.0 <= document["summary"][strategy]["trials"]["12"]["beats_random"] <= 1.0
    pruned = document["curves"]["random+hyperband"][0]
    assert pruned[11]["seconds"] < 12 * EPOCHS, "hyperband should have stopped some trials early"
    assert (results / "nas_strategies-table.png").stat().st_size > 0
    assert "regret" in capsys.readouterr().out


def test_a_strategy_that_always_does_better_beats_random_in_every_pair(scripts):
    _, nas_strategies = scripts
    assert nas_strategies._beats_random([0.0, 0.01], [0.02, 0.05, None]) == 1.0
    assert nas_strategies._beats_random([0.02], [0.02]) == 0.5


def test_an_architecture_missing_from_a_partial_table_fails_at_no_cost(scripts, tmp_path):
    _, nas_strategies = scripts
    table = nas_strategies.load(_synthetic_table(tmp_path / "table.jsonl.gz"))
    del table.runs[BEST]
    curve = nas_strategies.replay(table, "random", seed=0, trials=40, seconds=0.0)
    completed = sum(b["seconds"] > a["seconds"] for a, b in itertools.pairwise([{"seconds": 0.0}, *curve]))
    assert curve[-1]["seconds"] == completed * EPOCHS < 40 * EPOCHS


def test_the_pruner_replay_trains_fewer_epochs_under_a_pruner_and_refuses_bad_options(monkeypatch, tmp_path):
    (pruner_replay,) = import_scripts(monkeypatch, "pruner_replay")
    table, results = _synthetic_table(tmp_path / "table.jsonl.gz"), tmp_path / "results"
    options = ["--table", str(table), "--seeds", "2", "--budgets", "8", "--pruners", "none", "median"]
    assert pruner_replay.main([*options, "--results", str(results)]) == 0
    document = json.loads((results / "pruner_replay-table.json").read_text())["results"]
    epochs = document["epochs_after_trials"]
    assert epochs["random"]["8"]["mean"] == 8 * EPOCHS  # nothing pruned: every trial trains every epoch
    assert epochs["random+median"]["8"]["mean"] < 8 * EPOCHS  # the made-up curves leave most trials behind
    assert pruner_replay.main([*options, "--jobs", "0"]) == 2
