"""The meta model in the MLflow registry: registered as ``kubetune-meta`` by `kubetune meta fit`, loaded
by the warm-start step. A pyfunc model, so MLflow can also serve it (its input: one column per feature)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from kubetune import settings, tracking
from kubetune.meta import MetaModel, collect, fit
from kubetune.meta_features import FEATURES
from kubetune.storage import open_reader

__all__ = ["META_MODEL", "fit_database", "latest", "register"]

META_MODEL = "kubetune-meta"
_METRICS = ("trials", "studies", "pairs", "loso_mae", "loso_spearman")  # of the summary, as the run's metrics


class MetaPyfunc(PythonModel):
    """The pyfunc face of a :class:`kubetune.meta.MetaModel`: scores a frame of :data:`FEATURES` columns."""

    def __init__(self, model: MetaModel) -> None:
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:
        return [float(s) for s in self.model.score(np.asarray(model_input[FEATURES], dtype=float))]


def _experiment_id(client) -> str:
    found = client.get_experiment_by_name(META_MODEL)
    if found is not None:
        return found.experiment_id
    root = settings.artifact_root()
    return client.create_experiment(META_MODEL, artifact_location=None if root is None else f"{root}/{META_MODEL}")


def register(model: MetaModel) -> int:
    """Log ``model`` with its summary (tags and ``summary.json``) and register it as a new version; its number."""
    client = tracking.client()
    mlflow.set_tracking_uri(settings.tracking_uri())

    def log() -> int:
        with mlflow.start_run(experiment_id=_experiment_id(client), run_name="meta-fit"):
            mlflow.log_metrics({k: float(v) for k, v in model.summary.items() if k in _METRICS and v is not None})
            mlflow.log_dict(model.summary, "summary.json")
            logged = mlflow.pyfunc.log_model(name="model", python_model=MetaPyfunc(model))
        version = mlflow.register_model(logged.model_uri, META_MODEL, tags={"kubetune.summary": _tag(model.summary)})
        return int(version.version)

    return tracking.with_retries(log, what=f"registering the meta model {META_MODEL!r}")


def _tag(summary: dict) -> str:
    """The summary without its per-study details, which can outgrow a tag."""
    return json.dumps({k: v for k, v in summary.items() if k not in ("skipped", "versions")})


def latest() -> tuple[MetaModel, int] | None:
    """The newest registered version of the meta model and its number; None when none is registered."""
    client = tracking.client()
    mlflow.set_tracking_uri(settings.tracking_uri())

    def newest() -> int | None:
        try:
            versions = client.search_model_versions(f"name='{META_MODEL}'")
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise
        return max((int(v.version) for v in versions), default=None)

    version = tracking.with_retries(newest, what=f"looking up the meta model {META_MODEL!r}")
    if version is None:
        return None
    loaded = tracking.with_retries(
        lambda: mlflow.pyfunc.load_model(f"models:/{META_MODEL}/{version}"), what=f"loading {META_MODEL} v{version}"
    )
    return loaded.unwrap_python_model().model, version


def fit_database() -> dict:
    """`kubetune meta fit`: learn from every study in the study database, register; the summary and version."""
    model = fit(collect(open_reader()))
    return {**model.summary, "version": register(model)}
