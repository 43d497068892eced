"""kubetune.settings: embedded defaults under KUBETUNE_HOME, environment overrides, redacted URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune import settings

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


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "postgresql+psycopg://kubetune:S3cr3t-pw@db.example:5432/optuna",
            "postgresql+psycopg://kubetune:***@db.example:5432/optuna",
        ),
        (
            "postgresql://kubetune:S3cr3t-pw@db/optuna?sslmode=require",
            "postgresql://kubetune:***@db/optuna?sslmode=require",
        ),
        ("postgresql://kubetune@db/optuna?password=S3cr3t-pw", "postgresql://kubetune@db/optuna?password=***"),
        ("mysql+pymysql://root:S3cr3t-pw@127.0.0.1/optuna", "mysql+pymysql://root:***@127.0.0.1/optuna"),
        ("postgresql://kubetune@db/optuna", "postgresql://kubetune@db/optuna"),
        ("sqlite:////var/lib/kubetune/optuna.db", "sqlite:////var/lib/kubetune/optuna.db"),
    ],
)
def test_redact(url, expected):
    assert settings.redact(url) == expected
    assert "S3cr3t-pw" not in settings.redact(url)


def test_redact_password_with_special_characters():
    redacted = settings.redact("postgresql://kt:p%40ss%3Aw0rd@db/optuna")
    assert "p%40ss" not in redacted and "w0rd" not in redacted and "***" in redacted


@pytest.mark.parametrize("url", ["not a url", "", "postgresql://kt:S3cr3t-pw@db:port/optuna"])
def test_redact_unparseable(url):
    assert settings.redact(url) == "<unparseable storage URL>"


def test_redact_leaves_the_default_storage_url_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    assert settings.redact(settings.storage_url()) == settings.storage_url()
    assert Path(settings.storage_url().removeprefix("sqlite:///")).name == "optuna.db"
