# syntax=docker/dockerfile:1.7
#
# kubetune CPU runtime image: the KFP pipeline components (KFP starts them as
# `sh -c "python3 -m kfp.dsl.executor_main ..."`, so kfp and kubetune are installed here and python3 is on
# PATH), the Helm chart's Jobs (the `kubetune` CLI) and optuna-dashboard.
#
# Build from the repository root:
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kubetune/runtime:0.1.0 .

# ------------------------------------------------------------------------------------------------- base
# One base for both stages (its labels reach the final image), pinned by exact tag AND digest. The digest
# was taken from public references and cannot be pulled from this build environment: refresh it whenever
# the tag changes (and verify it) with
#   docker buildx imagetools inspect python:3.11.9-slim-bookworm
FROM python:3.11.9-slim-bookworm@sha256:2856e6af199e8128161abd320575eb9b341f3b76f017b5d0c9cd364f60d8a050 AS base
LABEL org.opencontainers.image.title="kubetune runtime" \
      org.opencontainers.image.description="kubetune CLI and KFP components (CPU)" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"

# ---------------------------------------------------------------------------------------------- builder
FROM base AS builder
ARG TORCH_VERSION=2.13.0
ARG OPTUNA_DASHBOARD_VERSION=0.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only in this stage, for any dependency that ships no wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU-only torch first, from the PyTorch CPU wheel index: `pip install .` then finds `torch` satisfied and
# never downloads the CUDA wheels from PyPI.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune ./kubetune
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-cache-dir . "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" \
 && pip check \
 && python3 -c "import torch; assert torch.version.cuda is None, 'CUDA torch in the CPU image'"

# ---------------------------------------------------------------------------------------------- runtime
FROM base AS runtime
# A fixed numeric user, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kubetune --shell /usr/sbin/nologin kubetune
# Only the virtual environment comes over: no compiler, no apt lists, no pip cache.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/kubetune \
    MPLCONFIGDIR=/tmp/matplotlib
RUN python3 -c "import kubetune, kfp, optuna, mlflow, torch" && kubetune --help >/dev/null
USER 1000:1000
WORKDIR /home/kubetune
ENTRYPOINT ["kubetune"]
CMD ["--help"]
