"""The search pipeline: one segment of the cyclic search.

    ExitHandler[ retrieve data -> ensure study -> ParallelFor[ suggest -> train -> evaluate ] -> register best ]
      -> next segment

A segment holds at most ``trialsPerSegment`` trials, so no single Argo workflow grows past etcd's
object-size limit; ``next-segment`` decides whether another run follows. A lane that fails for good
(a trial pod failing after its retries, a failed evaluate) fails the ParallelFor and skips
``register-best``, but must not end the experiment: ``next-segment`` is the segment's exit task, which
KFP 2.17 compiles to an Argo exit lifecycle hook on the exit handler's sub-DAG, run whatever its
outcome (backend/src/v2/compiler/argocompiler/dag.go@2.17.0). It fails the trials that lost their
lane and registers the best one when ``register-best`` did not run. Only one exit task is possible:
KFP allows one ExitHandler per pipeline, and 2.17 drops an exit hook placed on a ParallelFor task
(``iteratorTask`` takes no exit template), so ``register-best.ignore_upstream_failure()`` after the
loop would never run there. The pipeline is built per experiment because ParallelFor's parallelism
and the trial pod's resources are fixed at compile time.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from kubetune import __version__
from kubetune.cluster import settings_json
from kubetune.components import build
from kubetune.spec import Experiment

__all__ = ["ClusterSettings", "build_pipeline", "compile_pipeline"]

DEFAULT_IMAGE = f"ghcr.io/kubetune/runtime:{__version__}"
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer-cuda:{__version__}"
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
}
# Kubeflow's PodDefault "access-ml-pipeline" mounts a KFP API token (audience pipelines.kubeflow.org)
# into pods with this label; multi-user KFP refuses the next-segment submission without it. Standalone
# KFP ignores the label.
KFP_TOKEN_LABEL = ("access-ml-pipeline", "true")
NAMESPACE_ENV = "KUBETUNE_NAMESPACE"


@dataclass(frozen=True)
class ClusterSettings:
    """How the steps run in a cluster; ``None`` (the default of build_pipeline) means kfp.local."""

    image: str = field(default_factory=lambda: os.environ.get("KUBETUNE_IMAGE", DEFAULT_IMAGE))
    trainer_image: str = field(default_factory=lambda: os.environ.get("KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE))
    secret: str = "kubetune-credentials"
    config_map: str = "kubetune-config"
    image_pull_secrets: tuple[str, ...] = ()
    gpu_node_selector: dict = field(default_factory=dict)
    gpu_tolerations: tuple[dict, ...] = ()
    service_account: str | None = None
    shm_size: str = "1Gi"
    trial_timeout_seconds: int = 6 * 3600
    infrastructure_retries: int = 2
    # Requests and limits of the steps other than the trial: a namespace with a ResourceQuota and no
    # LimitRange refuses pods without them. Memory request = limit, so the kubelet never evicts a step.
    step_cpu: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_CPU", "250m"))
    step_cpu_limit: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_CPU_LIMIT", "1"))
    step_memory: str = field(default_factory=lambda: os.environ.get("KUBETUNE_STEP_MEMORY", "2Gi"))


def _cluster_step(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    """Credentials from the Secret, endpoints from the ConfigMap, the access label, no caching."""
    kubernetes.use_secret_as_env(task, settings.secret, SECRET_ENV)
    kubernetes.use_config_map_as_env(task, settings.config_map, CONFIG_ENV, optional=True)
    kubernetes.add_pod_label(task, ACCESS_LABEL, "true")
    if settings.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
    return task


def _step_resources(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    task.set_cpu_request(settings.step_cpu).set_cpu_limit(settings.step_cpu_limit)
    task.set_memory_request(settings.step_memory).set_memory_limit(settings.step_memory)


def _submits_runs(task: dsl.PipelineTask) -> None:
    """The next-segment step talks to the KFP API: a token from the PodDefault, its own namespace as env."""
    kubernetes.add_pod_label(task, *KFP_TOKEN_LABEL)
    kubernetes.use_field_path_as_env(task, NAMESPACE_ENV, "metadata.namespace")


def _without_none(toleration: dict) -> dict:
    return {key: value for key, value in toleration.items() if value is not None}


def _trial_pod(task: dsl.PipelineTask, experiment: Experiment, settings: ClusterSettings) -> None:
    """Resources, GPUs, placement, shared memory, timeout and infrastructure retries of a trial pod."""
    trial = experiment.spec.trial
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


def _trainer_image(experiment: Experiment, settings: ClusterSettings) -> str:
    trial = experiment.spec.trial
    return trial.image or (settings.trainer_image if trial.resources.gpu else settings.image)


def _data_is_pinned(experiment: Experiment) -> bool:
    """Whether the data step may be cached on its inputs: only when the source cannot change under the same spec."""
    data = experiment.spec.data
    return data.source.startswith("builtin:") or bool(data.sha256)


def build_pipeline(experiment: Experiment, cluster: ClusterSettings | None = None):
    """The segment pipeline of ``experiment``; with ``cluster`` the Kubernetes settings are added."""
    image = cluster.image if cluster else DEFAULT_IMAGE
    steps = {
        name: build(name, image=image)
        for name in (
            "retrieve-data",
            "ensure-study",
            "suggest-trial",
            "evaluate-trial",
            "register-best",
            "next-segment",
        )
    }
    train = build("train-trial", image=_trainer_image(experiment, cluster) if cluster else image)
    lanes = experiment.spec.budget.parallel_trials

    def settle(task: dsl.PipelineTask, *, cache: bool = False, step: bool = True) -> dsl.PipelineTask:
        """Caching off unless asked; in a cluster, credentials, labels and (for non-trial steps) resources."""
        task.set_caching_options(cache)
        if cluster:
            _cluster_step(task, cluster)
            if step:
                _step_resources(task, cluster)
        return task

    @dsl.pipeline(
        name=f"kubetune-{experiment.name}",
        description=f"kubetune search segment for experiment {experiment.name}: suggest, train and evaluate "
        f"up to {experiment.spec.budget.trials_per_segment} trials, {lanes} at a time, then register the best model.",
    )
    def search_segment(
        experiment_spec: str = experiment.to_json(),
        segment: int = 0,
        cluster_settings: str = settings_json(cluster) if cluster else "",
    ):
        """One segment of a kubetune search.

        Args:
            experiment_spec: The experiment spec as JSON (apiVersion kubetune/v1alpha1). The default is the spec this pipeline was compiled from; it holds no credentials.
            segment: Index of this segment, 0 for the first run. The next-segment step submits the run for segment + 1.
            cluster_settings: Images, Secret and ConfigMap names the next segment's run is compiled with (JSON, names only, no credentials); empty under kfp.local, where the local runner starts the next segment.
        """
        finish = settle(
            steps["next-segment"](experiment_spec=experiment_spec, segment=segment, cluster_settings=cluster_settings)
        )
        if cluster:
            _submits_runs(finish)
        with dsl.ExitHandler(finish, name="segment"):
            # Cached only for a source that cannot change under the same spec (a builtin or a pinned sha256).
            data = settle(steps["retrieve-data"](experiment_spec=experiment_spec), cache=_data_is_pinned(experiment))
            plan = settle(steps["ensure-study"](experiment_spec=experiment_spec, segment=segment))
            with dsl.ParallelFor(items=plan.output, parallelism=lanes) as slot:
                suggested = settle(steps["suggest-trial"](experiment_spec=experiment_spec, segment=segment, slot=slot))
                # suggest-trial returns -1 (no trial) once a stop rule holds: the lane then trains nothing.
                with dsl.If(suggested.output >= 0, name="trial-suggested"):
                    trained = settle(
                        train(
                            experiment_spec=experiment_spec,
                            trial_number=suggested.output,
                            dataset=data.outputs["dataset"],
                        ),
                        step=False,
                    )
                    if cluster:
                        _trial_pod(trained, experiment, cluster)
                    evaluated = settle(
                        steps["evaluate-trial"](
                            experiment_spec=experiment_spec,
                            trial_number=suggested.output,
                            train_result=trained.outputs["Output"],
                            predictions=trained.outputs["predictions"],
                            dataset=data.outputs["dataset"],
                        )
                    )
            settle(steps["register-best"](experiment_spec=experiment_spec).after(evaluated))

    return search_segment


def compile_pipeline(experiment: Experiment, output: str | Path, cluster: ClusterSettings | None = None) -> Path:
    """Write the pipeline YAML a user uploads in the Kubeflow UI."""
    output = Path(output)
    compiler.Compiler().compile(build_pipeline(experiment, cluster or ClusterSettings()), str(output))
    return output
