"""Where a segment pipeline runs, chosen once when it is built: the one place embedded and cluster differ.

A target gives the steps their images, adds what the steps need in a cluster (credentials from the
Secret, endpoints from the ConfigMap, labels, resources, the trial pod's placement), and names the end
of a segment the pipeline's exit step calls: ``cluster.finish_segment`` submits the next segment as a
KFP run, ``local.finish_segment`` hands it to the local runner (``kubetune run``), which starts it when
the run returns. Both end the segment through :func:`kubetune.segments.finish_segment`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from kfp import dsl, kubernetes

from kubetune.cluster_settings import DEFAULT_IMAGE, ClusterSettings
from kubetune.spec import Experiment

__all__ = ["EMBEDDED", "Embedded", "InCluster", "Target"]

ACCESS_LABEL = "kubetune.io/access"
# Secret keys -> environment variables of every step; values stay in the cluster, never in the pipeline.
SECRET_ENV = {
    "KUBETUNE_STORAGE": "KUBETUNE_STORAGE",
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
CONFIG_ENV = {
    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
    "KUBETUNE_S3_ENDPOINT": "KUBETUNE_S3_ENDPOINT",
    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
    "KUBETUNE_KFP_HOST": "KUBETUNE_KFP_HOST",
    "KUBETUNE_STORAGE_PROXY": "KUBETUNE_STORAGE_PROXY",  # grpc://..., or empty: the steps then use KUBETUNE_STORAGE
}
# Kubeflow's PodDefault "access-ml-pipeline" mounts a KFP API token (audience pipelines.kubeflow.org)
# into pods with this label; multi-user KFP refuses the next-segment submission without it. Standalone
# KFP ignores the label.
KFP_TOKEN_LABEL = ("access-ml-pipeline", "true")
NAMESPACE_ENV = "KUBETUNE_NAMESPACE"


class Target(Protocol):
    """What building the pipeline asks of the place it runs."""

    @property
    def image(self) -> str:
        """The image of every step but the trial."""

    @property
    def finish(self) -> str:
        """The ``module.function`` that the next-segment step calls to end the segment."""

    @property
    def finish_arguments(self) -> str:
        """That function's keyword arguments (besides the experiment and the segment) as JSON."""

    def trainer_image(self, experiment: Experiment) -> str: ...

    def step(self, task: dsl.PipelineTask, *, resources: bool) -> None: ...

    def trial_pod(self, task: dsl.PipelineTask, experiment: Experiment) -> None: ...

    def exit_step(self, task: dsl.PipelineTask) -> None: ...


class Embedded:
    """kfp.local on this machine: the steps run as local processes with the runner's environment."""

    image = DEFAULT_IMAGE  # kfp.local's SubprocessRunner ignores it; a component needs one
    finish = "local.finish_segment"
    finish_arguments = "{}"

    def trainer_image(self, experiment: Experiment) -> str:
        return self.image

    def step(self, task: dsl.PipelineTask, *, resources: bool) -> None:
        """Nothing to add: the environment is the runner's, the machine's resources are shared."""

    def trial_pod(self, task: dsl.PipelineTask, experiment: Experiment) -> None:
        """Nothing to add: a trial is a local process."""

    def exit_step(self, task: dsl.PipelineTask) -> None:
        """Nothing to add: the runner, not the step, starts the next segment."""


EMBEDDED = Embedded()


@dataclass(frozen=True)
class InCluster:
    """KFP on Kubernetes with ``settings``; the next segment is a KFP run compiled with the same settings."""

    settings: ClusterSettings
    finish = "cluster.finish_segment"

    @property
    def image(self) -> str:
        return self.settings.image

    @property
    def finish_arguments(self) -> str:
        return json.dumps({"cluster": self.settings.to_dict()})

    def trainer_image(self, experiment: Experiment) -> str:
        trial = experiment.spec.trial
        return trial.image or (self.settings.trainer_image if trial.resources.gpu else self.settings.image)

    def step(self, task: dsl.PipelineTask, *, resources: bool) -> None:
        """Credentials from the Secret, endpoints from the ConfigMap, the access label; for a step other than
        the trial, its requests and limits."""
        settings = self.settings
        kubernetes.use_secret_as_env(task, settings.secret, SECRET_ENV)
        kubernetes.use_config_map_as_env(task, settings.config_map, CONFIG_ENV, optional=True)
        kubernetes.add_pod_label(task, ACCESS_LABEL, "true")
        if settings.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
        if resources:
            task.set_cpu_request(settings.step_cpu).set_cpu_limit(settings.step_cpu_limit)
            task.set_memory_request(settings.step_memory).set_memory_limit(settings.step_memory)

    def trial_pod(self, task: dsl.PipelineTask, experiment: Experiment) -> None:
        """Resources, GPUs, placement, shared memory, timeout and infrastructure retries of a trial pod."""
        settings, trial = self.settings, experiment.spec.trial
        task.set_cpu_request(trial.resources.cpu).set_cpu_limit(trial.resources.cpu)
        task.set_memory_request(trial.resources.memory).set_memory_limit(trial.resources.memory)
        node_selector = dict(trial.node_selector)
        tolerations = [_without_none(t.model_dump()) for t in trial.tolerations]
        if trial.resources.gpu:
            task.set_accelerator_type(trial.resources.gpu_type).set_accelerator_limit(trial.resources.gpu)
            node_selector = {**settings.gpu_node_selector, **node_selector}  # the spec wins over cluster defaults
            defaults = [_without_none(t) for t in settings.gpu_tolerations]
            tolerations = [*defaults, *(t for t in tolerations if t not in defaults)]
        for key, value in node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for toleration in tolerations:
            kubernetes.add_toleration(task, **{k: toleration.get(k) for k in ("key", "operator", "value", "effect")})
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size
        )
        kubernetes.set_timeout(task, settings.trial_timeout_seconds)
        task.set_retry(num_retries=settings.infrastructure_retries, backoff_duration="30s", backoff_factor=2.0)

    def exit_step(self, task: dsl.PipelineTask) -> None:
        """The next-segment step talks to the KFP API: a token from the PodDefault, its own namespace as env."""
        kubernetes.add_pod_label(task, *KFP_TOKEN_LABEL)
        kubernetes.use_field_path_as_env(task, NAMESPACE_ENV, "metadata.namespace")


def _without_none(toleration: dict) -> dict:
    return {key: value for key, value in toleration.items() if value is not None}
