"""Shared fixtures: valid experiment documents as plain dicts, fresh for each test."""

from __future__ import annotations

import pytest
import yaml
from repo_paths import EXAMPLES


@pytest.fixture
def minimal_spec() -> dict:
    """The smallest valid experiment document."""
    return {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "unit-test"},
        "spec": {"data": {"source": "builtin:digits"}, "objective": {"metric": "val_accuracy"}},
    }


@pytest.fixture
def digits_spec() -> dict:
    """examples/digits.yaml as a dict: conditional parameters, an architecture space, a pruner."""
    return yaml.safe_load((EXAMPLES / "digits.yaml").read_text())
