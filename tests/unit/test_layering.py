"""The import-linter contracts cover every module, so a new core module cannot slip past the layering check."""

from __future__ import annotations

import tomllib

from repo_paths import REPO

EXTERNAL = {"kfp", "kfp_server_api", "kubernetes"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]


def _contracts() -> list[dict]:
    return _pyproject()["importlinter"]["contracts"]


def _modules() -> set[str]:
    """kubetune's modules and subpackages, with those pyproject.toml maps in from other folders (components/, pipelines/)."""
    package = REPO / "kubetune"
    files = {f"kubetune.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    packages = {f"kubetune.{path.name}" for path in package.iterdir() if (path / "__init__.py").exists()}
    return files | packages | set(_pyproject()["setuptools"]["package-dir"])


def test_the_mapped_folders_are_packages_of_kubetune():
    for name, folder in _pyproject()["setuptools"]["package-dir"].items():
        assert (REPO / folder / "__init__.py").exists() and name.startswith("kubetune.")
        assert not (REPO / "kubetune" / name.split(".")[-1]).exists(), f"{name} lives in {folder}/ only"


def test_every_module_is_core_or_named_above_it():
    core = next(c for c in _contracts() if c["type"] == "forbidden" and "kfp" in c["forbidden_modules"])
    listed = set(core["source_modules"]) | set(core["forbidden_modules"]) - EXTERNAL
    assert _modules() - listed == set(), "add the new module to the core contract's source_modules in pyproject.toml"
    assert listed - _modules() == set(), "the core contract names a module that no longer exists"


def test_the_layers_name_only_existing_modules():
    layers = next(c for c in _contracts() if c["type"] == "layers")
    named = {f"kubetune.{name.strip()}" for layer in layers["layers"] for name in layer.split("|")}
    assert named <= _modules()
