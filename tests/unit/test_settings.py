"""kubetune.settings: embedded defaults under KUBETUNE_HOME, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune import settings
from kubetune.redaction import redact_url

VARIABLES = ("KUBETUNE_HOME", "KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_home_defaults_to_dot_kubetune_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert settings.home() == tmp_path.resolve() / ".kubetune"
    assert settings.storage_url() == f"sqlite:///{tmp_path.resolve() / '.kubetune' / 'optuna.db'}"


def test_defaults_under_kubetune_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "state"))
    home = (tmp_path / "state").resolve()
    assert settings.home() == home and home.is_absolute()
    assert settings.storage_url() == f"sqlite:///{home}/optuna.db"
    assert settings.tracking_uri() == f"sqlite:///{home}/mlflow.db"
    assert settings.artifact_root() == (home / "mlartifacts").as_uri()
    assert settings.artifact_root().startswith("file://")


def test_relative_home_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBETUNE_HOME", "rel/state")
    assert settings.home() == tmp_path.resolve() / "rel" / "state"
    assert settings.storage_url().startswith(f"sqlite:///{tmp_path.resolve()}")


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_STORAGE", "postgresql+psycopg://kt:pw@db:5432/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert settings.storage_url() == "postgresql+psycopg://kt:pw@db:5432/optuna"
    assert settings.tracking_uri() == "http://mlflow:5000"
    assert settings.artifact_root() is None  # a tracking server decides where artifacts go


def test_empty_variables_fall_back_to_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_STORAGE", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert settings.storage_url() == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert settings.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_local_tracking_store_gets_a_local_artifact_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert settings.artifact_root() == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    assert settings.artifact_root() is None


def test_embedded_environment(tmp_path, monkeypatch):
    home = tmp_path / "new" / "home"
    monkeypatch.setenv("KUBETUNE_HOME", str(home))
    environment = settings.embedded_environment()
    assert home.is_dir()
    assert environment == {
        "KUBETUNE_HOME": str(home.resolve()),
        "KUBETUNE_STORAGE": f"sqlite:///{home.resolve()}/optuna.db",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home.resolve()}/mlflow.db",
    }


def test_embedded_environment_passes_overrides_on(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_STORAGE", "sqlite:////elsewhere/optuna.db")
    assert settings.embedded_environment()["KUBETUNE_STORAGE"] == "sqlite:////elsewhere/optuna.db"


def test_redaction_leaves_the_default_storage_url_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    assert redact_url(settings.storage_url()) == settings.storage_url()
    assert Path(settings.storage_url().removeprefix("sqlite:///")).name == "optuna.db"
