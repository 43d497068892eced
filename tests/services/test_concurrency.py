"""Many lanes, one PostgreSQL study: unique trial numbers, nothing lost, the budget held, tells counted once.

Each lane is a separate OS process (as a pipeline step is a separate pod) running the bodies of the
suggest, train and evaluate components in a loop while ``plan_slots`` leaves budget: the real
PostgreSQL fixture holds the study and the real MLflow server (on the S3 server) the runs.
"""

from __future__ import annotations

import secrets
import threading
import traceback
from pathlib import Path

import numpy as np
import optuna
import pytest
from lanes import SPAWN, run_lanes, small_experiment
from optuna.trial import TrialState

from kubetune import tracking
from kubetune.data import load_split, save_split
from kubetune.segments import start_segment
from kubetune.spec import parse_experiment
from kubetune.stop_rules import count_trials
from kubetune.study import ensure_study, get_trial, load_study, tell_once

LANES = 4


@pytest.fixture
def lane_folder(tmp_path: Path, use_stack_env, monkeypatch) -> Path:
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "home"))
    save_split(load_split({"source": "builtin:digits"}), tmp_path / "split.npz")
    return tmp_path


def test_concurrent_lanes_share_one_study_without_losing_or_overspending(lane_folder):
    budget = 8
    experiment = small_experiment(f"lanes-{secrets.token_hex(3)}", max_trials=budget, lanes=LANES)
    assert start_segment(experiment, segment=0) == list(range(budget))

    reports = run_lanes(experiment, lane_folder, LANES)

    told = [number for report in reports for number in report["told"]]
    trials = load_study(experiment).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), "trial numbers are unique and without gaps"
    assert sorted(told) == numbers, "every trial was told by exactly one lane, none is left behind"
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    counts = count_trials(load_study(experiment))
    # Lanes check the budget and then ask, so at most one trial per *other* lane can slip past it.
    assert budget <= counts.consumed <= budget + LANES - 1
    assert len({t.user_attrs["slot"] for t in trials}) > 1, "the lanes really ran side by side"

    client = tracking.client()  # the tracking server the lanes logged to
    mlflow_experiment = client.get_experiment_by_name(experiment.name)
    runs = client.search_runs([mlflow_experiment.experiment_id], "tags.`kubetune.role` = 'trial'")
    assert sorted(int(r.data.tags["kubetune.trial"]) for r in runs) == numbers, "one MLflow run per trial"
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}


def tell_in_process(url_env: dict, name: str, number: int, value: float, state: str, barrier, out) -> None:
    """Wait for every racer, then tell the trial; report whether this call told and any error."""
    import os

    os.environ.update(url_env)
    try:
        experiment = small_experiment(name, max_trials=4, lanes=2)
        study = load_study(experiment)
        barrier.wait(30)
        told = tell_once(study, number, state=TrialState[state], values=[value] if state == "COMPLETE" else None)
        out.put({"value": value, "state": state, "told": told, "error": None})
    except BaseException:  # noqa: BLE001 - reported, not swallowed
        out.put({"value": value, "state": state, "told": False, "error": traceback.format_exc()})


@pytest.mark.parametrize("rival_state", ["COMPLETE", "FAIL"])
def test_racing_tells_of_one_trial_count_once(stack_env, monkeypatch, rival_state):
    """Two processes and two threads tell the same trial at once: one wins, none crashes, it counts once."""
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)
    experiment = small_experiment(f"race-{secrets.token_hex(3)}", max_trials=4, lanes=2)
    study = ensure_study(experiment)
    number = study.ask().number
    racers = [(0.25, "COMPLETE"), (0.5, rival_state), (0.75, "COMPLETE"), (1.0, rival_state)]
    barrier, out = SPAWN.Barrier(len(racers)), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=tell_in_process, args=(stack_env, experiment.name, number, v, s, barrier, out))
        for v, s in racers[:2]
    ]
    threads = [
        threading.Thread(target=tell_in_process, args=(stack_env, experiment.name, number, v, s, barrier, out))
        for v, s in racers[2:]
    ]
    for racer in (*processes, *threads):
        racer.start()
    results = [out.get(timeout=120) for _ in racers]
    for racer in (*processes, *threads):
        racer.join(30)

    assert [r["error"] for r in results if r["error"]] == []
    winners = [r for r in results if r["told"]]
    assert len(winners) == 1, results
    trial = get_trial(load_study(experiment), number)
    assert trial.state == TrialState[winners[0]["state"]]
    if trial.state == TrialState.COMPLETE:
        assert trial.value == winners[0]["value"]
    # A repeated tell after the race changes nothing either.
    assert tell_once(load_study(experiment), number, state=TrialState.COMPLETE, values=[9.0]) is False
    after = get_trial(load_study(experiment), number)
    assert (after.state, after.values) == (trial.state, trial.values)
    counts = count_trials(load_study(experiment))
    assert counts.consumed == 1 and counts.running == 0
    assert len(optuna.load_study(study_name=experiment.name, storage=stack_env["KUBETUNE_STORAGE"]).trials) == 1


@pytest.mark.parametrize(
    "objective",
    [
        {"metric": "val_accuracy", "direction": "maximize"},
        [{"metric": "val_accuracy", "direction": "maximize"}, {"metric": "params", "direction": "minimize"}],
    ],
    ids=["single", "multi"],
)
def test_kubetune_tpe_suggests_what_optuna_tpe_suggests(postgres, objective, digits_spec):
    """make_sampler's TPE reads the trials once per ask instead of once per parameter group and caches
    observations (see kubetune.tpe); on the real database it must suggest exactly what Optuna's
    TPESampler suggests, with pruned and failed trials in the history."""
    from kubetune import space
    from kubetune.samplers import make_sampler

    document = digits_spec
    document["spec"]["objective"] = objective
    document["spec"]["strategy"]["pruner"] = {"name": "none"}
    experiment = parse_experiment(document)
    ours = make_sampler(experiment, seed_offset=11)
    theirs = optuna.samplers.TPESampler(
        seed=(experiment.spec.strategy.sampler.seed + 11) % 2**32,
        n_startup_trials=ours._n_startup_trials,
        multivariate=True,
        group=True,
        constant_liar=True,
    )

    def suggestions(sampler) -> list[dict]:
        url = postgres.create_database(f"tpe_{secrets.token_hex(4)}")
        study = optuna.create_study(storage=url, sampler=sampler, directions=experiment.spec.directions)
        for index in range(40):
            trial = study.ask()
            chosen, architecture = space.sample(trial, experiment.spec)
            accuracy = 1.0 / (1.0 + abs(np.log10(chosen["lr"]) + 2.5)) + 0.02 * len(architecture["blocks"])
            if len(experiment.spec.directions) == 1:
                trial.report(accuracy, 1)
            if index % 7 == 3:
                study.tell(trial, state=TrialState.PRUNED)
            elif index % 11 == 5:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, [accuracy, float(len(architecture["blocks"]))][: len(experiment.spec.directions)])
        return [t.params for t in study.trials]

    assert suggestions(ours) == suggestions(theirs)
