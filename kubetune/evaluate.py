"""Evaluate a trained trial on held-out data, log it to MLflow and tell the study, once.

The MLflow child run is written before the tell, and its id is stored on the trial, so a step killed
between the two is repaired by running it again: the run is found by its tags, the tell happens once.
The run also gets the architecture's diagram (an image) and its canonical code (tag
``kubetune.architecture``); both are overwritten, not added, when a step runs again.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from optuna.trial import TrialState

from kubetune import tracking
from kubetune.spec import Experiment
from kubetune.study import get_trial, load_study, set_trial_attrs, tell_once

__all__ = ["evaluate_trial", "log_architecture"]

TAG_ARCHITECTURE = "kubetune.architecture"  # the trial run's tag holding the architecture's canonical code
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def _held_out_metrics(predictions_path: str, split_path: str, result: dict) -> dict[str, float]:
    """Score the trainer's class scores on the held-out splits against the labels it never trained on."""
    import numpy as np

    from kubetune.data import read_split
    from kubetune.metrics import classification_metrics

    split = read_split(split_path)
    metrics = {"params": float(result["params"]), "train_seconds": float(result["train_seconds"])}
    with np.load(predictions_path) as scores:
        for name, labels in (("val", split.y_val), ("test", split.y_test)):
            if name in scores:
                metrics.update({f"{name}_{k}": v for k, v in classification_metrics(scores[name], labels).items()})
    return metrics


def log_architecture(run_id: str, architecture: dict, *, number: int) -> None:
    """Attach the diagram and the code of ``architecture`` to trial ``number``'s MLflow run."""
    from kubetune import diagram, encoding

    mlflow_client = tracking.client()
    with tempfile.TemporaryDirectory() as folder:
        path = diagram.draw(architecture, Path(folder) / diagram.FILE_NAME)

        def log() -> None:
            mlflow_client.log_artifact(run_id, str(path))
            mlflow_client.set_tag(run_id, TAG_ARCHITECTURE, encoding.encode(architecture))

        tracking.with_retries(log, what=f"logging the architecture diagram of trial {number}")


def evaluate_trial(
    experiment: Experiment, *, number: int, result: dict, predictions_path: str, split_path: str
) -> dict:
    """Returns ``{"number", "state", "values", "metrics", "mlflow_run_id"}`` for the trial."""
    study = load_study(experiment)
    frozen = get_trial(study, number)
    if frozen.state.is_finished():
        return {
            "number": number,
            "state": frozen.state.name,
            "values": frozen.values,
            "metrics": frozen.user_attrs.get("metrics", {}),
            "mlflow_run_id": frozen.user_attrs.get("mlflow_run_id"),
        }
    state = STATES[result["status"]]
    metrics: dict[str, float] = {}
    values = None
    if state == TrialState.COMPLETE:
        metrics = _held_out_metrics(predictions_path, split_path, result)
        values = [metrics[o.metric] for o in experiment.spec.objectives]
        if not all(math.isfinite(v) for v in values):
            state, result = TrialState.FAIL, {**result, "reason": f"objective is not finite: {values}"}
    parent_run_id = study.user_attrs["mlflow_parent_run_id"]
    run_id = tracking.log_trial(
        experiment,
        parent_run_id,
        number=number,
        state=state.name,
        hyperparameters=frozen.user_attrs.get("hyperparameters", {}),
        architecture=frozen.user_attrs.get("architecture"),
        history=result.get("history", []),
        metrics=metrics,
        started_at=result.get("started_at"),
        ended_at=result.get("ended_at"),
        inheritance=frozen.user_attrs.get("inheritance"),
        fidelity=frozen.user_attrs.get("fidelity"),
        suggested_by=frozen.user_attrs.get("suggested_by"),
    )
    architecture = frozen.user_attrs.get("architecture")
    if architecture:
        log_architecture(run_id, architecture, number=number)
    # Stored before the tell: a finished trial's attributes are frozen.
    outcome = {"mlflow_run_id": run_id, "metrics": metrics, "train_seconds": float(result.get("train_seconds", 0.0))}
    set_trial_attrs(study, number, outcome | ({"reason": result["reason"]} if result.get("reason") else {}))
    tell_once(study, number, state=state, values=values)
    return {"number": number, "state": state.name, "values": values, "metrics": metrics, "mlflow_run_id": run_id}
