#!/usr/bin/env bash
# Static checks, run by CI before the tests: lint and format (ruff), types (mypy), the package's layering
# (import-linter, contracts in pyproject.toml) and both Dockerfiles (hadolint).
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
ruff format --check .
mypy
lint-imports
hadolint --config images/hadolint.yaml images/runtime.Dockerfile images/trainer-cuda.Dockerfile
