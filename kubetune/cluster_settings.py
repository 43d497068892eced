"""How the steps of a segment run in a cluster: images, the Secret and ConfigMap they read, placement.

Configuration, not pipeline code: the CLI reads it from options and the environment, the pipeline is
compiled with it, and the next-segment step carries it (as JSON, in the compiled pipeline) to compile
the next run the same way. It names Kubernetes objects; the credentials stay in them, never in here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from kubetune import __version__

__all__ = ["DEFAULT_IMAGE", "DEFAULT_TRAINER_IMAGE", "ClusterSettings"]

DEFAULT_IMAGE = f"ghcr.io/kubetune/runtime:{__version__}"
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer-cuda:{__version__}"


@dataclass(frozen=True)
class ClusterSettings:
    """The Kubernetes side of a compiled pipeline; every field has a default, some from the environment."""

    image: str = field(default_factory=lambda: os.environ.get("KUBETUNE_IMAGE", DEFAULT_IMAGE))
    trainer_image: str = field(default_factory=lambda: os.environ.get("KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE))
    secret: str = "kubetune-credentials"
    config_map: str = "kubetune-config"
    image_pull_secrets: tuple[str, ...] = ()
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[dict[str, Any], ...] = ()
    service_account: str | None = None
    shm_size: str = "1Gi"
    trial_timeout_seconds: int = 6 * 3600
    infrastructure_retries: int = 2
    # Requests and limits of the steps other than the trial: a namespace with a ResourceQuota and no
    # LimitRange refuses pods without them. Memory request = limit, so the kubelet never evicts a step.
    step_cpu: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_CPU", "250m"))
    step_cpu_limit: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_CPU_LIMIT", "1"))
    step_memory: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_MEMORY", "2Gi"))

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data, keys sorted: what the pipeline carries to its next-segment step."""
        return dict(sorted(dataclasses.asdict(self).items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSettings:
        """The settings back from :meth:`to_dict`; a field left out takes its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"cluster settings have unknown fields {unknown}: the pipeline was compiled by another kubetune "
                "version than the step's image runs; compile and submit it again with the image's version"
            )
        fields = dict(data)
        for name in ("image_pull_secrets", "gpu_tolerations"):  # JSON has lists; the settings keep tuples
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)
