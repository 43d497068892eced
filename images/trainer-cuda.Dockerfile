# syntax=docker/dockerfile:1.7
#
# kubetune CUDA trainer image for GPU trial pods. It uses the CUDA build of torch that the PyTorch base
# image already ships (no second torch download); kubetune, kfp and the other dependencies go into a
# virtual environment that sees the base image's site-packages. KFP starts components with
# `sh -c "python3 -m kfp.dsl.executor_main ..."`: python3 from the venv is first on PATH.
#
# Build from the repository root:
#   docker build -f images/trainer-cuda.Dockerfile -t ghcr.io/kubetune/trainer-cuda:0.1.0 .

# ------------------------------------------------------------------------------------------------- base
# One base for both stages (its labels reach the final image), pinned by exact tag AND digest. The digest
# was taken from public references and cannot be pulled from this build environment: refresh it whenever
# the tag changes (and verify it) with
#   docker buildx imagetools inspect pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4 AS base
LABEL org.opencontainers.image.title="kubetune trainer (CUDA)" \
      org.opencontainers.image.description="kubetune trial trainer on the PyTorch CUDA runtime" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"

# ---------------------------------------------------------------------------------------------- builder
FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
# Compilers only in this stage, for any dependency that ships no wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubetune ./kubetune
COPY components ./components
COPY pipelines ./pipelines
# torch is already satisfied by the base image (through --system-site-packages), so pip keeps its CUDA
# build; the check fails the build if a second torch landed in the venv.
RUN pip install --no-cache-dir . \
 && pip check \
 && python3 -c "import pathlib, sys, torch; assert torch.version.cuda, 'torch without CUDA'; assert not pathlib.Path(torch.__file__).is_relative_to(sys.prefix), 'torch was reinstalled into the venv'"

# ---------------------------------------------------------------------------------------------- runtime
FROM base AS runtime
# A fixed numeric user, so Kubernetes can check runAsNonRoot without a passwd lookup. Ubuntu 24.04 bases
# ship a user "ubuntu" with uid 1000: it is removed first.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && if getent group ubuntu >/dev/null; then groupdel ubuntu; fi \
 && groupadd --gid 1000 kubetune \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/kubetune --shell /usr/sbin/nologin kubetune
# Only the virtual environment comes over: no compiler, no apt lists, no pip cache.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/kubetune \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN python3 -c "import kubetune, kfp, optuna, mlflow, torch" && kubetune --help >/dev/null
USER 1000:1000
WORKDIR /home/kubetune
ENTRYPOINT ["kubetune"]
CMD ["--help"]
