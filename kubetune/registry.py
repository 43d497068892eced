"""Register the best trial's model in the MLflow Model Registry and move the alias only if it wins.

A version is tied to the trial's MLflow run, so registering the same best trial again finds the
existing version instead of creating a second one.
"""

from __future__ import annotations

import tempfile

import mlflow
from mlflow.exceptions import MlflowException

from kubetune import tracking
from kubetune.spec import Experiment
from kubetune.study import best_trial, load_study

__all__ = ["register_best", "champion"]

TAG_VALUE = "kubetune.value"


def _beats(value: float, current: float, direction: str) -> bool:
    return value > current if direction == "maximize" else value < current


def champion(experiment: Experiment) -> dict | None:
    """The version the alias points at, with its recorded objective value, or None."""
    client = tracking.client()
    try:
        version = client.get_model_version_by_alias(experiment.model_name, experiment.spec.registry.alias)
    except MlflowException:
        return None
    return {"version": int(version.version), "value": float(version.tags.get(TAG_VALUE, "nan")),
            "trial": version.tags.get(tracking.TAG_TRIAL)}


def _existing_version(client, name: str, run_id: str):
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return found[0] if found else None


def _log_pytorch_model(run_id: str) -> str:
    """Download the trial's weights and log them as an MLflow PyTorch model; returns its URI."""
    import mlflow.pytorch
    import numpy as np
    import torch

    from kubetune.train import load_model

    client = tracking.client()
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, tracking.MODEL_FILE, folder)
        model, info = load_model(path)
    # A batch of two: torch.export (MLflow's pt2 format) keeps a batch dimension of 1 static.
    example = np.zeros((2, *info["input_shape"]), dtype=np.float32)
    model.eval()
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        )
    return logged.model_uri


def register_best(experiment: Experiment) -> dict:
    """Register the best trial (once) and point the alias at it when it beats the current champion."""
    study = load_study(experiment)
    best = best_trial(study, experiment)
    if best is None:
        return {"registered": False, "reason": "no completed trial yet"}
    run_id = best.user_attrs.get("mlflow_run_id")
    name, alias = experiment.model_name, experiment.spec.registry.alias
    value, direction = best.values[0], experiment.spec.directions[0]
    client = tracking.client()
    try:
        version = _existing_version(client, name, run_id)
        if version is None:
            version = mlflow.register_model(
                _log_pytorch_model(run_id),
                name,
                tags={tracking.TAG_STUDY: experiment.name, tracking.TAG_TRIAL: str(best.number), TAG_VALUE: str(value)},
            )
        current = champion(experiment)
        moved = current is None or (
            current["version"] != int(version.version) and _beats(value, current["value"], direction)
        )
        if moved:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as error:
        raise tracking.TrackingError(tracking.describe(error)) from None
    return {"registered": True, "model": name, "version": int(version.version), "trial": best.number,
            "value": value, "alias": alias, "alias_moved": moved}
