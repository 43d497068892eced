"""benchmarks/ scripts imported as modules, for the tests of their pure parts."""

import importlib
import sys
from types import ModuleType

import pytest
from repo_paths import REPO


def import_scripts(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[ModuleType]:
    """Fresh modules of the scripts ``names``; benchmarks/ goes on sys.path (and so spawned processes') because
    the scripts import their siblings by name."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    for name in names:
        sys.modules.pop(name, None)
    return [importlib.import_module(name) for name in names]
