"""Fixtures for the deployment tests (Helm chart, Dockerfiles, kustomize manifests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest


@pytest.fixture(scope="session")
def scenario_objects() -> dict[str, list[dict[str, Any]]]:
    """Rendered objects of the chart for every helm/kubetune/ci/*-values.yaml, rendered once."""
    return {name: ds.render_objects(ds.ci_values(name)) for name in ds.SCENARIOS}


@pytest.fixture(scope="session")
def default_objects(scenario_objects: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return scenario_objects["default-values"]


@pytest.fixture(scope="session")
def manifests_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifests/ with every *.env.example copied to *.env, as a user would do."""
    return ds.copy_manifests_with_env(tmp_path_factory.mktemp("kustomize"))


@pytest.fixture(scope="session")
def built(manifests_copy: Path) -> dict[str, list[dict[str, Any]]]:
    """`kubectl kustomize` of every kustomization in ds.KUSTOMIZE_BUILDS, built once."""
    return {name: ds.kustomize_build(manifests_copy / name) for name in ds.KUSTOMIZE_BUILDS}
