"""The Dockerfiles follow the image rules (no container engine here: they are read, not built).

Rules: base images pinned by exact tag and digest; multi-stage, with compilers and pip caches left in
the builder; a numeric non-root USER; kubetune installed; python3 on PATH; the kubetune CLI as
entrypoint; CPU torch from the PyTorch CPU index, CUDA torch from the PyTorch base image.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

import deploy_support as ds
import pytest

BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make", "cmake", "git", "-dev")
PINNED = re.compile(r"^(?P<name>[a-z0-9./_-]+):(?P<tag>[A-Za-z0-9._-]+)@sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined, comments dropped)."""
    logical, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def problems(text: str) -> list[str]:
    """Every rule a Dockerfile breaks."""
    found = []
    _, stages = parse(text)
    if len(stages) < 2:
        return ["not a multi-stage build"]
    for stage in stages:
        if stage.base in {s.name for s in stages}:
            continue
        if not PINNED.match(stage.base):
            found.append(f"base {stage.base!r} is not pinned by tag and digest")
        elif PINNED.match(stage.base)["tag"] in {"latest", "slim", "stable"}:
            found.append(f"base {stage.base!r} uses a floating tag")
    final = stages[-1]
    runs = " && ".join(final.all("RUN"))
    for tool in BUILD_TOOLS:
        if re.search(rf"(apt-get|apt|apk|yum|dnf)\s+(-\S+\s+)*install\b[^&;]*{re.escape(tool)}", runs):
            found.append(f"final stage installs build tool {tool}")
    if re.search(r"\bpip3?\s+install\b", runs) or "python3 -m pip install" in runs:
        found.append("final stage runs pip install (install in the builder, copy the environment)")
    if not any("--from=" in c for c in final.all("COPY")):
        found.append("final stage copies nothing from the builder")
    users = final.all("USER")
    if not users:
        found.append("no USER in the final stage")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            found.append(f"USER {users[-1]} is not numeric")
        elif int(uid) == 0:
            found.append("USER is root")
    entrypoints = final.all("ENTRYPOINT")
    if not entrypoints or json.loads(entrypoints[-1])[0] != "kubetune":
        found.append("ENTRYPOINT is not the kubetune CLI")
    env = " ".join(final.all("ENV"))
    if "/opt/venv/bin" not in env or "PATH=" not in env:
        found.append("the virtual environment (python3, kubetune) is not on PATH")
    builder_runs = [r for s in stages[:-1] for r in s.all("RUN")]
    installs = [r for r in builder_runs if re.search(r"\bpip3?\s+install\b", r)]
    if not any(re.search(r"\bpip3?\s+install\b[^&]*\s\.(\s|$)", r) for r in installs):
        found.append("kubetune (the repository, `pip install .`) is not installed")
    for install in installs:
        if "--no-cache-dir" not in install:
            found.append(f"pip install without --no-cache-dir: {install[:60]}")
    return found


def dockerfile(name: str) -> str:
    return (ds.IMAGES / name).read_text()


@pytest.mark.parametrize("name", ["runtime.Dockerfile", "trainer-cuda.Dockerfile"])
def test_dockerfile_follows_the_image_rules(name: str) -> None:
    assert problems(dockerfile(name)) == []


@pytest.mark.parametrize("name", ["runtime.Dockerfile", "trainer-cuda.Dockerfile"])
def test_digest_refresh_is_documented(name: str) -> None:
    text = dockerfile(name)
    assert "docker buildx imagetools inspect" in text
    assert re.search(r"COPY pyproject\.toml README\.md", text), "pyproject's readme must be in the build context"
    assert re.search(r"COPY kubetune \./kubetune", text), "the package (with its components and pipelines)"
    ignore = (ds.IMAGES / f"{name}.dockerignore").read_text().splitlines()
    assert "**" in ignore and {
        "!pyproject.toml",
        "!README.md",
        "!kubetune/**",
    } <= set(ignore)


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    _, stages = parse(dockerfile("runtime.Dockerfile"))
    assert PINNED.match(stages[0].base)["name"] == "python"
    torch_installs = [r for s in stages for r in s.all("RUN") if "torch==" in r and "pip install" in r]
    assert len(torch_installs) == 1
    args = shlex.split(torch_installs[0])
    assert args[args.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    # torch goes in before the project, so that `pip install .` finds it satisfied.
    runs = [r for r in stages[0].all("RUN")]
    assert runs.index(torch_installs[0]) < next(
        i for i, r in enumerate(runs) if re.search(r"pip install[^&]*\s\.\s", r)
    )


def test_cuda_image_reuses_the_base_torch() -> None:
    _, stages = parse(dockerfile("trainer-cuda.Dockerfile"))
    assert PINNED.match(stages[0].base)["name"] == "pytorch/pytorch"
    assert "cuda" in PINNED.match(stages[0].base)["tag"]
    assert stages[-1].base == stages[0].base, "the final stage must have the same torch as the builder"
    runs = " ".join(r for s in stages for r in s.all("RUN"))
    assert "--system-site-packages" in runs
    assert not re.search(r"pip install[^&]*\btorch\b", runs), "the CUDA image must not install another torch"
    assert "download.pytorch.org/whl/cpu" not in runs


@pytest.mark.parametrize(
    ("snippet", "problem"),
    [
        ("FROM python:3.11-slim AS builder\nRUN pip install --no-cache-dir .\nFROM python:3.11-slim\n", "not pinned"),
        ("FROM python:3.11.9@sha256:" + "0" * 64 + "\nRUN pip install .\n", "multi-stage"),
        (
            "FROM python:3.11.9@sha256:{d} AS builder\nRUN pip install --no-cache-dir .\n"
            "FROM python:3.11.9@sha256:{d}\nRUN apt-get update && apt-get install -y gcc\nCOPY --from=builder /opt/venv /opt/venv\n"
            'ENV PATH=/opt/venv/bin:$PATH\nUSER 1000\nENTRYPOINT ["kubetune"]\n',
            "build tool gcc",
        ),
        (
            "FROM python:3.11.9@sha256:{d} AS builder\nRUN pip install --no-cache-dir .\n"
            "FROM python:3.11.9@sha256:{d}\nCOPY --from=builder /opt/venv /opt/venv\nENV PATH=/opt/venv/bin:$PATH\n"
            'USER kubetune\nENTRYPOINT ["kubetune"]\n',
            "not numeric",
        ),
        (
            "FROM python:3.11.9@sha256:{d} AS builder\nRUN pip install .\n"
            "FROM python:3.11.9@sha256:{d}\nCOPY --from=builder /opt/venv /opt/venv\nENV PATH=/opt/venv/bin:$PATH\n"
            'USER 1000\nENTRYPOINT ["python"]\n',
            "ENTRYPOINT",
        ),
        (
            "FROM python:3.11.9@sha256:{d} AS builder\nRUN pip install .\n"
            "FROM python:3.11.9@sha256:{d}\nCOPY --from=builder /opt/venv /opt/venv\nENV PATH=/opt/venv/bin:$PATH\n"
            'USER 1000\nENTRYPOINT ["kubetune"]\n',
            "--no-cache-dir",
        ),
    ],
    ids=["floating-base", "single-stage", "compiler-in-final", "named-user", "wrong-entrypoint", "pip-cache"],
)
def test_rule_checker_catches_violations(snippet: str, problem: str) -> None:
    text = snippet.replace("{d}", "0" * 64)
    assert any(problem in p for p in problems(text)), problems(text)
