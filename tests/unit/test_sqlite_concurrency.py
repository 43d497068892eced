"""Embedded lanes share one SQLite study: two processes popping enqueued trials at once never get the same one.

SQLite ignores Optuna's ``SELECT ... FOR UPDATE``; without kubetune's ``BEGIN IMMEDIATE`` both lanes of a
warm-started run could pop the same enqueued trial and train it twice (seen as a flaky embedded test).
"""

from __future__ import annotations

import multiprocessing
import time

import optuna

from kubetune.storage import open_database

ASKS = 30


def _ask_all(storage_or_url, start: float, out) -> None:
    storage = open_database(storage_or_url) if isinstance(storage_or_url, str) else storage_or_url
    study = optuna.load_study(study_name="lanes", storage=storage)
    while time.time() < start:  # both processes ask at the same moment
        pass
    out.put([study.ask().number for _ in range(ASKS)])


def test_two_lanes_never_pop_the_same_enqueued_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_database(url)
    study = optuna.create_study(study_name="lanes", storage=storage)
    for index in range(2 * ASKS):
        study.enqueue_trial({"x": index}, skip_if_exists=False)
    context = multiprocessing.get_context("spawn")  # one lane opens the database, the other gets a pickled storage
    out = context.Queue()
    start = time.time() + 5
    lanes = [context.Process(target=_ask_all, args=(target, start, out)) for target in (url, storage)]
    for lane in lanes:
        lane.start()
    first, second = out.get(timeout=120), out.get(timeout=120)
    for lane in lanes:
        lane.join(timeout=60)
    assert sorted(first + second) == list(range(2 * ASKS))  # every enqueued trial popped exactly once
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials())


def test_an_in_memory_database_keeps_its_tables():
    """Its one connection is its database: the state-change lock must leave it working."""
    study = optuna.create_study(study_name="alone", storage=open_database("sqlite:///:memory:"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2
