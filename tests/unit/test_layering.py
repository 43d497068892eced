"""The import-linter contracts cover every module, so a new core module cannot slip past the layering check."""

from __future__ import annotations

import tomllib

from repo_paths import REPO

EXTERNAL = {"kfp", "kfp_server_api", "kubernetes"}


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _modules() -> set[str]:
    package = REPO / "kubetune"
    files = {f"kubetune.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    packages = {f"kubetune.{path.name}" for path in package.iterdir() if (path / "__init__.py").exists()}
    return files | packages


def test_every_module_is_core_or_named_above_it():
    core = next(c for c in _contracts() if c["type"] == "forbidden" and "kfp" in c["forbidden_modules"])
    listed = set(core["source_modules"]) | set(core["forbidden_modules"]) - EXTERNAL
    assert _modules() - listed == set(), "add the new module to the core contract's source_modules in pyproject.toml"
    assert listed - _modules() == set(), "the core contract names a module that no longer exists"


def test_the_layers_name_only_existing_modules():
    layers = next(c for c in _contracts() if c["type"] == "layers")
    named = {f"kubetune.{name.strip()}" for layer in layers["layers"] for name in layer.split("|")}
    assert named <= _modules()
