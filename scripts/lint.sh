#!/usr/bin/env bash
# Static checks, run by CI before the tests: lint and format (ruff), types (mypy), the package's layering
# (import-linter, contracts in pyproject.toml) and both Dockerfiles (hadolint).
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
ruff format --check .
# Types and layering are checked on the package as pip installs it: pyproject.toml maps components/ and
# pipelines/ into kubetune, and mypy and import-linter only see a package's own folder (so their messages
# name kubetune/components/... and kubetune/pipelines/... for the files in components/ and pipelines/).
installed=$(mktemp -d)
trap 'rm -rf "$installed"' EXIT
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-build-isolation --target "$installed" .
(cd "$installed" && PYTHONPATH="$installed" mypy --config-file "$OLDPWD/pyproject.toml" && PYTHONPATH="$installed" lint-imports --no-cache "$OLDPWD/pyproject.toml")
hadolint --config images/hadolint.yaml images/runtime.Dockerfile images/trainer-cuda.Dockerfile
