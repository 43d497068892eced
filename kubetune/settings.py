"""Where state lives: the study database, the MLflow store and the embedded home directory.

Components read only the environment, so the same code runs in a pod (env from Kubernetes Secrets)
and under kfp.local (env set by the local runner).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "artifact_root",
    "embedded_environment",
    "embedded_study_file",
    "home",
    "storage_url",
    "tracking_uri",
]

DEFAULT_HOME = ".kubetune"


def home() -> Path:
    """The embedded state directory: ``KUBETUNE_HOME`` or ``./.kubetune``."""
    return Path(os.environ.get("KUBETUNE_HOME", DEFAULT_HOME)).resolve()


def embedded_study_file() -> Path | None:
    """The SQLite study file in the home directory, or None when the study is elsewhere (see storage_url)."""
    elsewhere = os.environ.get("KUBETUNE_STORAGE_PROXY") or os.environ.get("KUBETUNE_STORAGE")
    return None if elsewhere else home() / "optuna.db"


def storage_url() -> str:
    """The Optuna storage: the storage proxy, ``KUBETUNE_STORAGE``, or a SQLite file in the home directory.

    ``KUBETUNE_STORAGE_PROXY`` (``grpc://host:port``, from the chart's ConfigMap) comes first: the pipeline
    steps get it and the Secret's database URL, which the proxy itself and ``kubetune doctor`` use.
    """
    return (
        os.environ.get("KUBETUNE_STORAGE_PROXY")
        or os.environ.get("KUBETUNE_STORAGE")
        or f"sqlite:///{embedded_study_file()}"
    )


def tracking_uri() -> str:
    """The MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or a SQLite file in the home directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Where a new MLflow experiment keeps artifacts when the store is local (None: the server decides)."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://", "databricks")):
        return None
    return (home() / "mlartifacts").as_uri()


def logs_folder() -> Path:
    """Where `kubetune run` writes the step server's and each segment's logs (made if missing)."""
    folder = home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def embedded_environment() -> dict[str, str]:
    """The variables the local runner hands to every component subprocess."""
    home().mkdir(parents=True, exist_ok=True)
    return {
        "KUBETUNE_HOME": str(home()),
        "KUBETUNE_STORAGE": storage_url(),
        "MLFLOW_TRACKING_URI": tracking_uri(),
    }
