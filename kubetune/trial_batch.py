"""trial.trialsPerPod: one pod (or kfp.local step) runs several of a segment's slots in turn, each its own
trial suggested, trained and evaluated here, so that short trials pay a cluster's pod start-ups (8 pods per
trial, see benchmarks/cluster_overhead.py) once per k trials instead of once per trial.

Pod p of a segment runs slots p*k .. p*k+k-1 of the segment's plan (recorded by
:func:`kubetune.segments.start_segment`), each with the slot's own sampler seed as a lane of its own would
have; it stops early when a stop rule holds. Each trial is the same work as the three steps of the
ordinary lane, through the same core functions, and a failure in one ends the pod as it would end a lane.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubetune.evaluate import evaluate_trial
from kubetune.search import NO_TRIAL, suggest_trial, train_trial
from kubetune.segments import PLANNED_SLOTS
from kubetune.spec import Experiment
from kubetune.study import load_study

__all__ = ["pod_slots", "run_trials"]


def pod_slots(experiment: Experiment, *, segment: int, pod: int) -> range:
    """The slots of pod ``pod``: its k of the segment's planned slots."""
    planned = load_study(experiment).user_attrs.get(PLANNED_SLOTS) or {}
    if planned.get("segment") != segment:
        raise RuntimeError(
            f"the study records the plan of segment {planned.get('segment')}, not of segment {segment}: "
            "the ensure-study step of this segment did not run or another segment started since"
        )
    per_pod = experiment.spec.trial.trials_per_pod
    return range(pod * per_pod, min((pod + 1) * per_pod, planned["slots"]))


def run_trials(experiment: Experiment, *, segment: int, pod: int, split_path: str) -> list[dict]:
    """Suggest, train and evaluate this pod's trials in turn; returns each trial's outcome."""
    outcomes = []
    for slot in pod_slots(experiment, segment=segment, pod=pod):
        number = suggest_trial(experiment, segment=segment, slot=slot)
        if number == NO_TRIAL:
            break
        with tempfile.TemporaryDirectory() as folder:
            predictions = str(Path(folder) / "predictions.npz")
            result = train_trial(
                experiment,
                number=number,
                split_path=split_path,
                model_path=str(Path(folder) / "model.pt"),
                predictions_path=predictions,
            )
            outcome = evaluate_trial(
                experiment, number=number, result=result, predictions_path=predictions, split_path=split_path
            )
        print(f"kubetune: slot {slot}: trial {number} {outcome['state']}", flush=True)
        outcomes.append(outcome)
    return outcomes
