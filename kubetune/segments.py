"""The start and the end of a segment: plan its trial slots, then decide whether another follows.

The study records the segment counter and the stop reason, so the decision is the same whoever asks
(the local runner, a re-run step, or `kubetune status`).
"""

from __future__ import annotations

import tempfile

from kubetune.spec import Experiment
from kubetune.study import Decision, best_trial, decide, ensure_study, load_study, plan_slots

__all__ = ["start_segment", "register_new_best", "finish_segment"]


def start_segment(experiment: Experiment, *, segment: int) -> list[int]:
    """Create or load the study and its MLflow parent run; return this segment's slot indices."""
    study = ensure_study(experiment)
    if "mlflow_parent_run_id" not in study.user_attrs:
        from kubetune import tracking  # MLflow is slow to import; only the first segment needs it here

        study.set_user_attr("mlflow_parent_run_id", tracking.ensure_parent_run(experiment))
    return plan_slots(study, experiment)


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


def finish_segment(experiment: Experiment, *, segment: int, cluster_settings: str = "") -> Decision:
    """Record that ``segment`` ran; submit the next one in a cluster, or attach the summary and plots to MLflow."""
    study = load_study(experiment)
    if study.user_attrs.get("segment", 0) <= segment:
        study.set_user_attr("segment", segment + 1)
    decision = decide(study, experiment, segment=segment)
    if decision.go_on:
        from kubetune.cluster import continue_experiment

        continue_experiment(experiment, study, segment=segment, cluster_settings=cluster_settings)
    else:
        from kubetune import report, tracking

        study.set_user_attr("stop_reason", decision.reason)
        summary = report.summarize(study, experiment)
        with tempfile.TemporaryDirectory() as folder:
            plots = report.write_plots(study, experiment, folder)
            tracking.log_summary(study.user_attrs["mlflow_parent_run_id"], summary, plots)
    return decision
