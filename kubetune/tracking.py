"""MLflow tracking: one parent run per experiment, one child run per trial, found again by tags.

Every write looks its run up by tags first, so a re-run step never logs a trial twice. Only the
client API is used (no global active run), so lanes in threads or processes cannot interfere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubetune import settings
from kubetune.errors import UserError
from kubetune.spec import Experiment

__all__ = ["TrackingError", "client", "ensure_parent_run", "find_trial_run", "log_trial", "flatten_architecture"]

TAG_STUDY = "kubetune.study"
TAG_ROLE = "kubetune.role"
TAG_TRIAL = "kubetune.trial"
MODEL_FILE = "model.pt"


class TrackingError(UserError, RuntimeError):
    """MLflow could not be reached or refused a write; the message names the tracking URI."""


def client() -> MlflowClient:
    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(mlflow_client: MlflowClient, experiment: Experiment) -> str:
    found = mlflow_client.get_experiment_by_name(experiment.name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            experiment.name, artifact_location=_artifact_location(experiment), tags={TAG_STUDY: experiment.name}
        )
    except MlflowException:  # created meanwhile by a racing step
        return mlflow_client.get_experiment_by_name(experiment.name).experiment_id


def _artifact_location(experiment: Experiment) -> str | None:
    root = settings.artifact_root()
    return None if root is None else f"{root}/{experiment.name}"


def _search(mlflow_client: MlflowClient, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)


def ensure_parent_run(experiment: Experiment) -> str:
    """The experiment's parent run, created once, holding the spec and the recorded versions."""
    mlflow_client = client()
    try:
        experiment_id = _experiment_id(mlflow_client, experiment)
        found = _search(mlflow_client, experiment_id, {TAG_ROLE: "parent", TAG_STUDY: experiment.name})
        if found:
            return found[0].info.run_id
        run = mlflow_client.create_run(
            experiment_id, run_name=experiment.name, tags={TAG_ROLE: "parent", TAG_STUDY: experiment.name}
        )
        mlflow_client.log_dict(run.info.run_id, experiment.to_dict(), "experiment.json")
        mlflow_client.log_param(run.info.run_id, "fingerprint", experiment.search_space_fingerprint())
        return run.info.run_id
    except MlflowException as error:
        raise TrackingError(describe(error)) from None


def describe(error: Exception) -> str:
    return (
        f"MLflow at {settings.redact(settings.tracking_uri())} refused or did not answer: "
        f"{str(error).splitlines()[0][:200]}. Check MLFLOW_TRACKING_URI and that the server is up."
    )


def flatten_architecture(architecture: dict | None) -> dict[str, Any]:
    """``{"arch.blocks": 2, "arch.b0.kind": "conv", ...}``: MLflow params are flat."""
    if not architecture:
        return {}
    flat: dict[str, Any] = {"arch.blocks": len(architecture["blocks"])}
    for index, block in enumerate(architecture["blocks"]):
        flat.update({f"arch.b{index}.{key}": value for key, value in block.items()})
    return flat


def find_trial_run(experiment: Experiment, parent_run_id: str, number: int) -> str | None:
    mlflow_client = client()
    parent = mlflow_client.get_run(parent_run_id)
    found = _search(mlflow_client, parent.info.experiment_id, {TAG_STUDY: experiment.name, TAG_TRIAL: str(number)})
    return found[0].info.run_id if found else None


def log_trial(
    experiment: Experiment,
    parent_run_id: str,
    *,
    number: int,
    state: str,
    hyperparameters: dict,
    architecture: dict | None,
    history: list[dict],
    metrics: dict[str, float],
    model_path: str | None,
) -> str:
    """Log one trial as a child run (params, per-epoch metrics, final metrics, model file) once."""
    existing = find_trial_run(experiment, parent_run_id, number)
    if existing:
        return existing
    mlflow_client = client()
    try:
        parent = mlflow_client.get_run(parent_run_id)
        run = mlflow_client.create_run(
            parent.info.experiment_id,
            run_name=f"trial-{number}",
            tags={
                TAG_STUDY: experiment.name,
                TAG_TRIAL: str(number),
                TAG_ROLE: "trial",
                "kubetune.state": state,
                "mlflow.parentRunId": parent_run_id,
            },
        )
        run_id = run.info.run_id
        params = {**hyperparameters, **flatten_architecture(architecture)}
        mlflow_client.log_batch(
            run_id,
            params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()],
            metrics=_metric_entities(history, metrics),
        )
        if architecture:
            mlflow_client.log_dict(run_id, architecture, "architecture.json")
        if model_path and Path(model_path).exists():
            _log_file(mlflow_client, run_id, model_path, MODEL_FILE)
        status = RunStatus.to_string(RunStatus.FINISHED if state != "FAIL" else RunStatus.FAILED)
        mlflow_client.set_terminated(run_id, status=status)
        return run_id
    except MlflowException as error:
        raise TrackingError(describe(error)) from None


def _metric_entities(history: list[dict], final: dict[str, float]) -> list:
    timestamp = mlflow.utils.time.get_current_time_millis()
    entities = [
        mlflow.entities.Metric(key, float(value), timestamp, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and value is not None
    ]
    entities += [mlflow.entities.Metric(f"final_{key}", float(value), timestamp, 0) for key, value in final.items()]
    return entities


def _log_file(mlflow_client: MlflowClient, run_id: str, source: str, name: str) -> None:
    """Upload ``source`` under the artifact name ``name`` (MLflow keeps the local file name)."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / name
        shutil.copyfile(source, target)
        mlflow_client.log_artifact(run_id, str(target))


def log_summary(parent_run_id: str, summary: dict, plots: dict[str, str]) -> None:
    """Attach the end-of-run summary and the plot files to the parent run."""
    mlflow_client = client()
    try:
        mlflow_client.log_dict(parent_run_id, summary, "summary.json")
        for path in plots.values():
            mlflow_client.log_artifact(parent_run_id, path, artifact_path="plots")
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow_client.log_batch(
            parent_run_id,
            metrics=[
                mlflow.entities.Metric(k, float(v), mlflow.utils.time.get_current_time_millis(), 0)
                for k, v in numbers.items()
            ],
        )
        mlflow_client.set_tag(parent_run_id, "kubetune.summary", json.dumps(summary)[:4900])
    except MlflowException as error:
        raise TrackingError(describe(error)) from None
