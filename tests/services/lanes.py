"""What the service tests share: a small experiment, one lane in-process, and lane processes.

A lane runs the bodies of the suggest, train and evaluate components as the pipeline does; a lane
process (spawned: a fresh interpreter, as a step is a fresh pod) repeats that while the budget has room.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from kubetune.spec import Experiment, parse_experiment

SPAWN = multiprocessing.get_context("spawn")


def small_document(
    name: str,
    *,
    max_trials: int = 3,
    lanes: int = 1,
    epochs: int = 1,
    parameters: dict | None = None,
    model: str | None = None,
) -> dict:
    """A digits experiment of one tiny MLP block, quick enough to run many trials per test."""
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "data": {"source": "builtin:digits"},
            "objective": {"metric": "val_accuracy"},
            "parameters": parameters or {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "architecture": {
                "blocks": {"low": 1, "high": 1},
                "block": {"kind": {"choices": ["mlp"]}, "width": {"choices": [8, 16]}},
            },
            "strategy": {"sampler": {"name": "tpe", "seed": 0}},
            "budget": {"maxTrials": max_trials, "parallelTrials": lanes, "trialsPerSegment": max_trials},
            "trial": {"epochs": epochs, "heartbeatSeconds": 5},
            "registry": {"modelName": model or name},
        },
    }


def small_experiment(name: str, **options) -> Experiment:
    return parse_experiment(small_document(name, **options))


def artifact_paths(folder: Path, number: int) -> dict[str, str]:
    return {"model_path": str(folder / f"model-{number}"), "predictions_path": str(folder / f"predictions-{number}")}


def one_lane(experiment: Experiment, folder: Path, *, slot: int = 0, segment: int = 0) -> dict:
    """One suggest -> train -> evaluate in this process; ``folder`` holds ``split.npz``."""
    from kubetune.evaluate import evaluate_trial
    from kubetune.search import suggest_trial, train_trial

    number = suggest_trial(experiment, segment=segment, slot=slot)
    split = str(folder / "split.npz")
    paths = artifact_paths(folder, number)
    result = train_trial(experiment, number=number, split_path=split, **paths)
    return evaluate_trial(
        experiment, number=number, result=result, split_path=split, predictions_path=paths["predictions_path"]
    )


def lane_until_budget(spec: str, slot: int, folder: str, out: str) -> None:
    """A lane process: lanes while ``plan_slots`` leaves budget; writes what it told (or its error) to ``out``."""
    os.environ["KUBETUNE_TRAIN_THREADS"] = "1"
    from kubetune.stop_rules import plan_slots
    from kubetune.study import load_study

    experiment = parse_experiment(json.loads(spec))
    told, error = [], None
    try:
        while plan_slots(load_study(experiment), experiment):
            told.append(one_lane(experiment, Path(folder), slot=slot)["number"])
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        error = traceback.format_exc()
    Path(out).write_text(json.dumps({"told": told, "error": error}))


def run_lanes(
    experiment: Experiment, folder: Path, lanes: int, *, during: Callable[[], None] | None = None, timeout: float = 240
) -> list[dict]:
    """Start ``lanes`` lane processes, call ``during()`` while they run, and return what each did."""
    processes = []
    for slot in range(lanes):
        out = folder / f"lane-{slot}.json"
        process = SPAWN.Process(target=lane_until_budget, args=(experiment.to_json(), slot, str(folder), str(out)))
        process.start()
        processes.append((process, out))
    try:
        if during is not None:
            during()
        deadline = time.monotonic() + timeout
        for process, _ in processes:
            process.join(max(1.0, deadline - time.monotonic()))
            assert not process.is_alive(), f"a lane did not finish within {timeout} s"
    finally:
        for process, _ in processes:
            if process.is_alive():
                process.kill()
    reports = [json.loads(out.read_text()) for _, out in processes]
    errors = [r["error"] for r in reports if r["error"]]
    assert not errors, errors[0]
    return reports


def restart_mid_search(
    experiment: Experiment, database_url: str, restart: Callable[[], None], before: dict[int, float]
) -> Callable[[], None]:
    """A ``during`` for run_lanes: once two trials completed, note them in ``before``, then ``restart()``."""
    import optuna
    from optuna.trial import TrialState

    def during() -> None:
        deadline = time.monotonic() + 180
        observer = optuna.load_study(study_name=experiment.name, storage=database_url)
        while len(done := observer.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            assert time.monotonic() < deadline, "the lanes did not complete two trials"
            time.sleep(0.1)
        before.update({t.number: t.value for t in done})
        assert len(before) < experiment.spec.budget.max_trials, "the restart comes mid-search"
        restart()

    return during
