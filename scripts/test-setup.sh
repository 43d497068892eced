#!/usr/bin/env bash
# Installs what the test suite needs, on a fresh machine or a laptop after the README's Quick start.
# Idempotent. The README's test command runs it before pytest, and so does CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install --quiet --disable-pip-version-check)

# The CPU build of torch first, so that no dependency pulls a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
# The KFP double parses submitted pipelines with the protos of the oldest supported backend (2.15.0),
# kept apart from the installed 2.17 ones: tests/cluster/kfp_double.py reads their descriptors.
"${pip[@]}" --no-deps --upgrade --target build/kfp-protos-2.15.0 kfp-pipeline-spec==2.15.0 kfp-kubernetes==2.15.0
# Servers for tests/services (PostgreSQL 15; the S3 and MLflow servers come from pip packages).
bash .ci/services.sh
