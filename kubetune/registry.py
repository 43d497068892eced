"""Register the best trial's model in the MLflow Model Registry and move the alias only if it wins.

A version is tied to the trial's MLflow run, so registering the same best trial again finds the
existing version instead of creating a second one. Registration is retried as a whole (look up,
log, register, move the alias) with the bounded backoff of :func:`kubetune.tracking.with_retries`,
so a registry or artifact store that is briefly down delays it, one that stays down ends it with a
TrackingError naming the endpoint, and a later run registers the model exactly once.

Logging and registering a model go through MLflow's fluent API, which reads the global tracking URI:
:func:`register_best` points it at the store :func:`kubetune.tracking.client` names before using it.
"""

from __future__ import annotations

import math
import tempfile

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubetune import tracking
from kubetune.spec import Experiment
from kubetune.study import best_trial, load_study

__all__ = ["champion", "register_best"]

TAG_VALUE = "kubetune.value"


def _beats(value: float, current: float, direction: str) -> bool:
    return value > current if direction == "maximize" else value < current


def champion(experiment: Experiment) -> dict | None:
    """The version the alias points at, with its recorded objective value (None if unrecorded), or None."""
    return _champion(tracking.client(), experiment)


def _champion(client, experiment: Experiment) -> dict | None:
    try:
        version = client.get_model_version_by_alias(experiment.model_name, experiment.spec.registry.alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise  # the registry did not answer: not the same as "no champion yet"
        return None
    return {
        "version": int(version.version),
        "value": _recorded_value(version.tags.get(TAG_VALUE)),
        "trial": version.tags.get(tracking.TAG_TRIAL),
    }


def _recorded_value(tag: str | None) -> float | None:
    """The champion's objective value, or None when its version has no usable value tag (registered by hand,
    or the tag was removed): such a champion cannot be compared, so any new best replaces it."""
    if tag is None:
        return None
    try:
        value = float(tag)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _versions_of_run(client, name: str, run_id: str) -> list:
    """The versions registered from ``run_id``, oldest first. Errors propagate: reading "none" from a server
    that failed to answer would register a second version."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda version: int(version.version))


def _existing_version(client, name: str, run_id: str):
    """The version registered from ``run_id``, if any."""
    found = _versions_of_run(client, name, run_id)
    return found[0] if found else None


def _keep_oldest(client, name: str, run_id: str):
    """Two runs of one spec that register the same trial at once may both create a version: each then keeps
    the oldest and deletes the others, so both end with one version per trial and agree on which."""
    oldest, *extra = _versions_of_run(client, name, run_id)
    for version in extra:
        try:
            client.delete_model_version(name, version.version)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
    return oldest


def _log_pytorch_model(client: MlflowClient, run_id: str, *, parent_run_id: str, number: int) -> str:
    """Download the trial's weights (uploaded beside the experiment's run by the train step) and log them
    as an MLflow PyTorch model of the trial's run ``run_id``; returns its URI."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from kubetune.train import load_model

    # The logged model belongs to the trial's experiment: without it MLflow files it under "Default", with its
    # files in ./mlruns of whatever directory the step ran in.
    logged_model = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=client.get_run(run_id).info.experiment_id
    )
    # The run's own artifact repository, not client.download_artifacts: that one turns every failure
    # (an artifact store that is down included) into "does not exist", which must not be retried.
    repository = get_artifact_repository(client.get_run(parent_run_id).info.artifact_uri, client.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        path = repository.download_artifacts(tracking.trial_weights_path(number), folder)
        model, info = load_model(path)
    # A batch of two: torch.export (MLflow's pt2 format) keeps a batch dimension of 1 static.
    example = np.zeros((2, *info["input_shape"]), dtype=np.float32)
    model.eval()
    # run_id, not `with mlflow.start_run(...)`: a failed upload must not mark the trial's run FAILED
    # nor leave an active run behind for the next attempt.
    logged = mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        run_id=run_id,
        model_id=logged_model.model_id,
    )
    return logged.model_uri


def register_best(experiment: Experiment) -> dict:
    """Register the best trial (once) and point the alias at it when it beats the current champion."""
    study = load_study(experiment)
    best = best_trial(study, experiment)
    if best is None:
        return {"registered": False, "reason": "no completed trial yet"}
    run_id = best.user_attrs.get("mlflow_run_id")
    # A run that is gone took the trial's weights with it: nothing to register, and no retry brings them back.
    if run_id is None or not tracking.run_exists(run_id):
        return {
            "registered": False,
            "trial": best.number,
            "reason": f"the MLflow run of trial {best.number} is gone (the MLflow store was deleted or replaced); "
            "the next better trial is registered",
        }
    name, alias = experiment.model_name, experiment.spec.registry.alias
    value, direction = best.values[0], experiment.spec.directions[0]
    client = tracking.client()
    mlflow.set_tracking_uri(client.tracking_uri)  # for the fluent calls below: see the module docstring

    def register() -> tuple[int, bool]:
        version = _existing_version(client, name, run_id)
        if version is None:
            parent_run_id = study.user_attrs["mlflow_parent_run_id"]
            version = mlflow.register_model(
                _log_pytorch_model(client, run_id, parent_run_id=parent_run_id, number=best.number),
                name,
                tags={tracking.TAG_STUDY: experiment.name, tracking.TAG_TRIAL: str(best.number), TAG_VALUE: str(value)},
            )
            version = _keep_oldest(client, name, run_id)
        current = _champion(client, experiment)
        moved = current is None or (
            current["version"] != int(version.version)
            and (current["value"] is None or _beats(value, current["value"], direction))
        )
        if moved:
            client.set_registered_model_alias(name, alias, version.version)
        return int(version.version), moved

    number, moved = tracking.with_retries(register, what=f"registering trial {best.number} as model {name!r}")
    return {
        "registered": True,
        "model": name,
        "version": number,
        "trial": best.number,
        "value": value,
        "alias": alias,
        "alias_moved": moved,
    }
