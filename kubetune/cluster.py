"""Cluster mode: submit an experiment's segments as KFP runs, and the next one when a segment ends.

The run name is ``<experiment>-<spec hash>-s<segment>``: the same spec submitted twice finds its run,
a changed spec starts a new one. The study records which run continued which segment (the idempotency
key), so a re-run next-segment step never submits the following segment twice.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from kubetune.errors import UserError
from kubetune.kfp_api import KfpGateway, Submission
from kubetune.segments import SUBMITTED_PREFIX, chain_finished, run_name, segments_finished
from kubetune.spec import Experiment

__all__ = ["continue_experiment", "register_search_pipeline", "resume_experiment", "run_name", "submit_segment"]

HOST_ENV = "KUBETUNE_KFP_HOST"


def _host(host: str | None) -> str:
    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise UserError(f"no KFP API host: pass --host or set {HOST_ENV} (e.g. http://ml-pipeline.kubeflow.svc:8888)")
    return host


def submit_segment(
    experiment: Experiment, *, segment: int, cluster, host: str | None = None, namespace: str | None = None
) -> Submission:
    """Compile the segment pipeline with ``cluster`` settings and start it, unless it already runs."""
    gateway = KfpGateway(_host(host), namespace=namespace)
    return _start(gateway, experiment, segment=segment, cluster=cluster, name=run_name(experiment, segment))


def _start(gateway: KfpGateway, experiment: Experiment, *, segment: int, cluster, name: str) -> Submission:
    from kubetune.pipelines import compile_pipeline

    with tempfile.TemporaryDirectory() as folder:
        package = compile_pipeline(experiment, Path(folder) / "pipeline.yaml", cluster)
        return gateway.submit(
            str(package),
            experiment_name=experiment.name,
            run_name=name,
            arguments={"experiment_spec": experiment.to_json(), "segment": segment},
            service_account=cluster.service_account,
        )


def resume_experiment(experiment: Experiment, *, cluster, host: str | None = None, namespace: str | None = None) -> str:
    """Continue this spec's chain when it stopped for a reason other than a stop rule; says what it did.

    Such a chain ended because a run failed before its exit step, was deleted, or its exit step could not
    submit the next run. The chain goes on from the segment after its last finished one; when a run of
    that name already exists (it failed), the new one is named ``<run name>-retry<n>``. Nothing is started
    while any run of the experiment is still active, so resuming twice starts one run.
    """
    from kubetune.study import StudyError, decide, load_study

    try:
        study = load_study(experiment)
    except StudyError:
        raise UserError(
            f"experiment {experiment.name!r} has no study in the database KUBETUNE_STORAGE points at: "
            "start it with `kubetune submit`, or point KUBETUNE_STORAGE at the cluster's database"
        ) from None
    decision = decide(study, experiment, segments_finished=segments_finished(study))
    if not decision.go_on:
        return f"nothing to resume: experiment {experiment.name} stopped by its stop rule ({decision.reason})"
    gateway = KfpGateway(_host(host), namespace=namespace)
    runs = gateway.runs(experiment.name)
    active = [run.name for run in runs if run.active]
    if active:
        return f"nothing to resume: run {', '.join(active)} of experiment {experiment.name} is still active"
    finished = chain_finished(study, experiment)
    segment = finished[-1] + 1 if finished else 0
    taken, name = {run.name for run in runs}, run_name(experiment, segment)
    if name in taken:
        name = next(f"{name}-retry{n}" for n in itertools.count(1) if f"{name}-retry{n}" not in taken)
    submission = _start(gateway, experiment, segment=segment, cluster=cluster, name=name)
    return f"resumed: submitted run {submission.run_name} (id {submission.run_id}) for segment {segment}"


def continue_experiment(experiment: Experiment, study, *, segment: int, cluster_settings: str) -> str | None:
    """From the next-segment step: submit segment + 1 once; returns its run id (None in embedded mode)."""
    if not cluster_settings:
        return None
    from kubetune.pipelines import ClusterSettings

    key = SUBMITTED_PREFIX + run_name(experiment, segment + 1)  # per chain: a changed spec has its own
    if key in study.user_attrs:
        return study.user_attrs[key]
    fields = json.loads(cluster_settings)
    cluster = ClusterSettings(
        **{
            **fields,
            "image_pull_secrets": tuple(fields.get("image_pull_secrets", ())),
            "gpu_tolerations": tuple(fields.get("gpu_tolerations", ())),
        }
    )
    submission = submit_segment(experiment, segment=segment + 1, cluster=cluster)
    study.set_user_attr(key, submission.run_id)
    return submission.run_id


def register_search_pipeline(
    experiment: Experiment, *, name: str, version: str, cluster, host: str | None = None, namespace: str | None = None
):
    """Upload the pipeline compiled from ``experiment`` (its spec is the default parameter) as a version."""
    from kubetune.pipelines import compile_pipeline

    gateway = KfpGateway(_host(host), namespace=namespace)
    with tempfile.TemporaryDirectory() as folder:
        package = compile_pipeline(experiment, Path(folder) / "pipeline.yaml", cluster)
        return gateway.register_pipeline(str(package), name=name, version=version)


def settings_json(cluster) -> str:
    """ClusterSettings as the JSON the pipeline carries to its next-segment step (no credentials in it)."""
    return json.dumps(asdict(cluster), sort_keys=True)
