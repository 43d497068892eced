"""The Dockerfiles pass hadolint and follow our own image rules (no container engine here: read, not built).

hadolint (images/hadolint.yaml) holds the general rules: pinned tags, trusted registries, OCI labels, a
non-root numeric USER, pip without a cache, JSON-form ENTRYPOINT. The tests below hold what it cannot know:
one base image pinned by tag AND digest, a final stage that only receives the builder's environment and
runs as the chart's user, the build context, and where each image's torch comes from.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import deploy_support as ds
import pytest
import yaml
from repo_paths import REPO

# kubetune/, and the folders pyproject.toml maps into it (components/, pipelines/)
PACKAGE_FOLDERS = [
    "kubetune",
    *tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values(),
]

PINNED = re.compile(r"(?P<name>[a-z0-9./_-]+):(?P<tag>[A-Za-z0-9._-]+)@sha256:[0-9a-f]{64}")
FLOATING_TAGS = {"latest", "slim", "stable", "runtime", "devel"}
# A pip install in a RUN instruction or its `&&` continuation (not in a comment).
PIP_INSTALLS = re.compile(r"(?m)^(?:RUN| &&) (pip install [^&\n]*)")


def text(name: str) -> str:
    return (ds.IMAGES / name).read_text()


def stages(name: str) -> dict[str, str]:
    """Each stage's instructions by stage name: the text from its `FROM ... AS <name>` line to the next FROM."""
    parts = re.split(r"(?m)^FROM \S+ AS (\w+)\n", text(name))
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def base_image(name: str) -> re.Match[str]:
    match = re.search(rf"(?m)^FROM ({PINNED.pattern}) AS base$", text(name))
    assert match, f"{name}: the base stage is not `FROM <image>:<tag>@sha256:<digest> AS base`"
    return match


@pytest.mark.parametrize("name", ds.DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    assert ds.hadolint(ds.IMAGES / name) == []


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM quay.io/python:3.11\nRUN pip install torch==2.13.0\nUSER root\n")
    codes = {finding["code"] for finding in ds.hadolint(bad)}
    # untrusted registry, missing OCI labels (both from images/hadolint.yaml), pip cache, root user
    assert {"DL3026", "DL3049", "DL3042", "DL3002"} <= codes


@pytest.mark.parametrize("name", ds.DOCKERFILES)
def test_one_base_image_pinned_by_tag_and_digest(name: str) -> None:
    base = base_image(name)
    assert base["tag"] not in FLOATING_TAGS
    assert re.findall(r"(?m)^FROM .*$", text(name)) == [
        f"FROM {base[1]} AS base",
        "FROM base AS builder",
        "FROM base AS runtime",
    ], "every stage starts from the one pinned base"
    assert f"docker buildx imagetools inspect {base['name']}:{base['tag']}\n" in text(name), "digest refresh"


@pytest.mark.parametrize("name", ds.DOCKERFILES)
def test_final_stage_only_receives_the_environment(name: str) -> None:
    final = stages(name)["runtime"]
    assert "COPY --from=builder /opt/venv /opt/venv\n" in final
    assert "apt-get" not in final, "no packages (and no compilers) in the final stage"
    assert not PIP_INSTALLS.search(final), "install in the builder, copy the environment"
    assert re.search(r"(?m)^ENV PATH=/opt/venv/bin:\$PATH", final), "python3 and kubetune from the venv"
    assert re.search(r'(?m)^ENTRYPOINT \["kubetune"\]$', final)


@pytest.mark.parametrize("name", ds.DOCKERFILES)
def test_final_user_is_the_charts_user(name: str) -> None:
    pod = yaml.safe_load((ds.CHART / "values.yaml").read_text())["podSecurityContext"]
    users = re.findall(r"(?m)^USER (.+)$", stages(name)["runtime"])
    assert users[-1:] == [f"{pod['runAsUser']}:{pod['runAsGroup']}"], "runAsNonRoot needs this numeric user"


@pytest.mark.parametrize("name", ds.DOCKERFILES)
def test_build_context_holds_only_the_package(name: str) -> None:
    builder = stages(name)["builder"]
    assert "COPY pyproject.toml README.md ./\n" in builder, "pyproject's readme must be in the build context"
    for folder in PACKAGE_FOLDERS:
        assert f"COPY {folder} ./{folder}\n" in builder, "the package is built from these folders"
    assert re.search(r"pip install --no-cache-dir \.[ \n]", builder), "kubetune itself is installed"
    ignore = (ds.IMAGES / f"{name}.dockerignore").read_text().splitlines()
    admitted = {"!pyproject.toml", "!README.md"} | {f"!{folder}/**" for folder in PACKAGE_FOLDERS}
    assert "**" in ignore and admitted <= set(ignore)


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    assert base_image("runtime.Dockerfile")["name"] == "python"
    builder = stages("runtime.Dockerfile")["builder"]
    torch = [line for line in PIP_INSTALLS.findall(builder) if "torch" in line]
    assert torch == [
        'pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"'
    ]
    # torch goes in before the project, so that `pip install .` finds it satisfied.
    assert builder.index(torch[0]) < builder.index("pip install --no-cache-dir . ")


def test_cuda_image_reuses_the_base_torch() -> None:
    base = base_image("trainer-cuda.Dockerfile")
    assert base["name"] == "pytorch/pytorch"
    assert "cuda" in base["tag"]
    builder = stages("trainer-cuda.Dockerfile")["builder"]
    assert "python3 -m venv --system-site-packages /opt/venv" in builder
    installs = PIP_INSTALLS.findall(text("trainer-cuda.Dockerfile"))
    assert installs and not [i for i in installs if "torch" in i], "the CUDA image must not install another torch"
