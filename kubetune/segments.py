"""The start and the end of a segment: plan its trial slots, then decide whether another follows.

A segment is one pipeline run, named ``<experiment>-<spec hash>-s<segment>``. The study records, under
that run name, which segments finished and which run continued each one, so the decision is the same
whoever asks (the local runner, a re-run step, or `kubetune status`), a changed spec's chain keeps its
own records, and each record is its own study attribute (no read-modify-write between two chains).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sys
import tempfile
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from kubetune import settings
from kubetune.redaction import redact_url
from kubetune.spec import Experiment
from kubetune.stop_rules import Decision, decide, plan_slots
from kubetune.study import best_trial, ensure_study, live_trial, load_study, tell_once

__all__ = [
    "FINISHED_PREFIX",
    "LOST_LANE_REASON",
    "PLANNED_SLOTS",
    "SUBMITTED_PREFIX",
    "SubmitNext",
    "chain_finished",
    "chain_prefix",
    "close_lanes",
    "finish_segment",
    "register_new_best",
    "run_name",
    "segments_finished",
    "start_segment",
]

PLANNED_SLOTS = "planned_slots"  # with trialsPerPod > 1: {segment, slots} of the segment under way
FINISHED_PREFIX = "finished:"  # + run name -> when the segment's last step ran
SUBMITTED_PREFIX = "submitted:"  # + run name of the following segment -> its KFP run id
# How the next segment starts, given its experiment and index: a KFP run in a cluster (kubetune.cluster),
# the local runner in embedded mode (kubetune.local). Returns the id of what it started, which the study
# records, or None when there is nothing to record (the local runner reads the hand-over once).
SubmitNext = Callable[[Experiment, int], str | None]
LOST_LANE_REASON = (
    "its lane ended without telling the study (the trial pod failed after its retries, or the evaluate step "
    "failed); the KFP run shows which step"
)


def run_name(experiment: Experiment, segment: int) -> str:
    """The pipeline run of ``segment``: the spec's hash tells a changed spec's chain from the old one.

    The hash is of the canonical spec (keys sorted), so reformatting a spec file in git starts no new chain.
    """
    return f"{chain_prefix(experiment)}{segment}"


def chain_prefix(experiment: Experiment) -> str:
    """``<experiment>-<spec hash>-s``: what every run name of this spec's chain starts with."""
    canonical = json.dumps(experiment.to_dict(), sort_keys=True, separators=(",", ":"))
    return f"{experiment.name}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}-s"


def chain_finished(study: optuna.Study, experiment: Experiment) -> list[int]:
    """The segments of this spec's chain whose exit step ran."""
    prefix = FINISHED_PREFIX + chain_prefix(experiment)
    return sorted(
        int(key.removeprefix(prefix))
        for key in study.user_attrs
        if key.startswith(prefix) and key.removeprefix(prefix).isdigit()
    )


def start_segment(experiment: Experiment, *, segment: int) -> list[int]:
    """Create or load the study and its MLflow parent run; return this segment's slot indices, or with
    ``trial.trialsPerPod`` k > 1 the indices of its pods, each running k of the slots (:mod:`kubetune.trial_batch`).

    The parent run is checked before any slot is planned, so a lost MLflow store is repaired (a new parent
    run) before a trial starts, instead of failing every trial's evaluate step and spending the budget.
    """
    from kubetune import tracking

    study = ensure_study(experiment)
    known = study.user_attrs.get("mlflow_parent_run_id")
    parent = tracking.ensure_parent_run(experiment, known=known)
    if parent != known:
        if known is not None:
            print(
                f"kubetune: the MLflow run {known} of experiment {experiment.name!r} is gone from "
                f"{redact_url(settings.tracking_uri())}; trials from now on are logged to a new run "
                f"{parent} (the study keeps every earlier trial)",
                file=sys.stderr,
            )
        study.set_user_attr("mlflow_parent_run_id", parent)
    slots = plan_slots(study, experiment)
    per_pod = experiment.spec.trial.trials_per_pod
    if per_pod == 1:
        return slots
    study.set_user_attr(PLANNED_SLOTS, {"segment": segment, "slots": len(slots)})  # what each pod's share is of
    return list(range(math.ceil(len(slots) / per_pod)))


def close_lanes(study: optuna.Study, experiment: Experiment, *, segment: int) -> list[int]:
    """Fail this segment's trials that are still running once every lane has ended; returns their numbers.

    Runs after the ParallelFor whether or not its lanes succeeded, so a lane whose pod failed for good
    leaves a failed trial at once instead of a running one that holds a budget slot until it goes stale.
    """
    name = run_name(experiment, segment)
    lost = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("run") == name
    ]
    for number in lost:
        live_trial(study, number).set_user_attr("fail_reason", LOST_LANE_REASON)
        tell_once(study, number, state=TrialState.FAIL)
    return lost


def register_new_best(experiment: Experiment) -> dict:
    """Register the best trial unless it is the one registered at the end of an earlier segment."""
    study = load_study(experiment)
    best = best_trial(study, experiment)
    if best is not None and study.user_attrs.get("registered_trial") == best.number:
        return {"registered": True, "trial": best.number, "unchanged": True}
    from kubetune.registry import register_best  # MLflow and torch: only when there is something new

    result = register_best(experiment)
    if result.get("registered"):
        study.set_user_attr("registered_trial", result["trial"])
    return result


def _register_if_missed(experiment: Experiment) -> None:
    """A registration failure must not end the chain: the next segment's register-best tries again."""
    try:
        register_new_best(experiment)
    except Exception as error:  # noqa: BLE001 - MLflow or the object store away; nothing recorded is lost
        print(
            f"kubetune: the best model was not registered this segment ({error}); the next segment retries",
            file=sys.stderr,
        )


def segments_finished(study: optuna.Study) -> int:
    """How many segments of the experiment have finished, over every spec's chain."""
    return sum(key.startswith(FINISHED_PREFIX) for key in study.user_attrs)


def finish_segment(experiment: Experiment, *, segment: int, submit_next: SubmitNext) -> Decision:
    """The segment's exit step, run even after a failed lane: close its lanes, register the best trial if
    register-best did not run, record that ``segment`` ran, decide, then start the next segment with
    ``submit_next`` (once: what it started is recorded under ``submitted:<run name>``) or record why the
    experiment stops and attach the summary and plots to MLflow."""
    study = load_study(experiment)
    close_lanes(study, experiment, segment=segment)
    _register_if_missed(experiment)
    finished = FINISHED_PREFIX + run_name(experiment, segment)
    if finished not in study.user_attrs:  # a re-run of this step counts the segment once
        study.set_user_attr(finished, dt.datetime.now(dt.UTC).isoformat())
    if study.user_attrs.get("segment", 0) <= segment:
        study.set_user_attr("segment", segment + 1)
    decision = decide(study, experiment, segments_finished=segments_finished(study))
    if decision.go_on:
        _start_next(study, experiment, segment + 1, submit_next)
    else:
        from kubetune import report, tracking

        study.set_user_attr("stop_reason", decision.reason)
        summary = report.summarize(study, experiment)
        with tempfile.TemporaryDirectory() as folder:
            plots = report.write_plots(study, experiment, folder)
            tracking.log_summary(study.user_attrs["mlflow_parent_run_id"], summary, plots)
    return decision


def _start_next(study: optuna.Study, experiment: Experiment, segment: int, submit_next: SubmitNext) -> None:
    """Per chain (a changed spec has its own key), so a re-run of the exit step never starts it twice."""
    key = SUBMITTED_PREFIX + run_name(experiment, segment)
    if key in study.user_attrs:
        return
    started = submit_next(experiment, segment)
    if started is not None:
        study.set_user_attr(key, started)
