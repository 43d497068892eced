"""benchmarks/inheritance_search.py and the in-process search it runs: children inherit, the clock stops it."""

from __future__ import annotations

import itertools

import pytest
from benchmark_scripts import import_scripts

from kubetune.spec import parse_experiment


@pytest.fixture
def modules(monkeypatch):
    return tuple(import_scripts(monkeypatch, "inprocess", "inheritance_search"))


def _experiment(inherit: bool, trials: int):
    return parse_experiment(
        {
            "apiVersion": "kubetune/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "inherit-test"},
            "spec": {
                "data": {"source": "builtin:digits"},
                "objective": {"metric": "val_accuracy"},
                "architecture": {
                    "type": "cell",
                    "nodes": 1,
                    "cells": {"low": 1, "high": 1},
                    "width": {"choices": [4, 8]},
                },
                "strategy": {
                    "sampler": {"name": "evolution", "seed": 0, "population": 2, "tournament": 2},
                    "inheritWeights": inherit,
                },
                "budget": {"maxTrials": trials, "parallelTrials": 1, "trialsPerSegment": trials},
                "trial": {"epochs": 1},
            },
        }
    )


def test_children_inherit_only_when_the_spec_says_so(modules):
    inprocess, _ = modules
    inherited = inprocess.run_inprocess(_experiment(True, 5), threads=1)
    scratch = inprocess.run_inprocess(_experiment(False, 5), threads=1)
    # The first two trials are the random population; every later one mutates a completed parent.
    assert inherited.inherited == 3 and scratch.inherited == 0
    assert len(inherited.test_accuracy) == len(inherited.values) == 5
    assert all(0.0 <= accuracy <= 1.0 for accuracy in inherited.test_accuracy)


def test_the_search_stops_once_its_clock_has_run_out(modules):
    inprocess, _ = modules
    ticks = itertools.count()  # one tick per reading: the study stops after the trial that reads past 3
    run = inprocess.run_inprocess(_experiment(False, 50), seconds=3, clock=lambda: float(next(ticks)), threads=1)
    assert run.trials < 50


def test_the_incumbent_is_the_best_trial_finished_in_time(modules):
    inprocess, search = modules
    run = inprocess.SearchRun(9.0, 5.0, [(1.0, 0.5, 1), (2.0, 0.9, 2), (5.0, 0.95, 3)], 3, [0.4, 0.8, 0.9])
    assert search.incumbent(run, 0.5) is None
    assert search.incumbent(run, 3.0) == (0.9, 0.8)
    assert search.incumbent(run, 9.0) == (0.95, 0.9)
