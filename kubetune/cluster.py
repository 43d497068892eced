"""Cluster mode: submit an experiment's segments as KFP runs, and the next one when a segment ends.

The run name is ``<experiment>-<spec hash>-s<segment>``: the same spec submitted twice finds its run,
a changed spec starts a new one. In a cluster, "submit the next segment" (the action the core's
:func:`kubetune.segments.finish_segment` takes as a parameter) is a KFP run compiled with the settings
of the run that ends; the study records which run continued which segment, so a re-run next-segment
step never submits the following segment twice.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

from kubetune import segments
from kubetune.cluster_settings import ClusterSettings
from kubetune.errors import UserError
from kubetune.kfp_api import KfpGateway, Submission
from kubetune.segments import chain_finished, run_name, segments_finished
from kubetune.spec import Experiment
from kubetune.stop_rules import Decision, decide
from kubetune.storage import StudyError
from kubetune.study import load_study

__all__ = ["finish_segment", "register_search_pipeline", "resume_experiment", "run_name", "submit_segment"]

HOST_ENV = "KUBETUNE_KFP_HOST"


def _host(host: str | None) -> str:
    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise UserError(f"no KFP API host: pass --host or set {HOST_ENV} (e.g. http://ml-pipeline.kubeflow.svc:8888)")
    return host


def submit_segment(
    experiment: Experiment,
    *,
    segment: int,
    cluster: ClusterSettings,
    host: str | None = None,
    namespace: str | None = None,
) -> Submission:
    """Compile the segment pipeline with ``cluster`` settings and start it, unless it already runs."""
    gateway = KfpGateway(_host(host), namespace=namespace)
    return _start(gateway, experiment, segment=segment, cluster=cluster, name=run_name(experiment, segment))


def _start(
    gateway: KfpGateway, experiment: Experiment, *, segment: int, cluster: ClusterSettings, name: str
) -> Submission:
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


def resume_experiment(
    experiment: Experiment, *, cluster: ClusterSettings, host: str | None = None, namespace: str | None = None
) -> str:
    """Continue this spec's chain when it stopped for a reason other than a stop rule; says what it did.

    Such a chain ended because a run failed before its exit step, was deleted, or its exit step could not
    submit the next run. The chain goes on from the segment after its last finished one; when a run of
    that name already exists (it failed), the new one is named ``<run name>-retry<n>``. Nothing is started
    while any run of the experiment is still active, so resuming twice starts one run.
    """
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


def finish_segment(experiment: Experiment, *, segment: int, cluster: dict[str, Any]) -> Decision:
    """The exit step of a segment run in a cluster: the next segment is a KFP run compiled with the same
    ``cluster`` settings (:meth:`ClusterSettings.to_dict`) as this one."""
    settings = ClusterSettings.from_dict(cluster)

    def submit_next(experiment: Experiment, segment: int) -> str:
        return submit_segment(experiment, segment=segment, cluster=settings).run_id

    return segments.finish_segment(experiment, segment=segment, submit_next=submit_next)


def register_search_pipeline(
    experiment: Experiment,
    *,
    name: str,
    version: str,
    cluster: ClusterSettings,
    host: str | None = None,
    namespace: str | None = None,
) -> tuple[str, bool]:
    """Upload the pipeline compiled from ``experiment`` (its spec is the default parameter) as a version."""
    from kubetune.pipelines import compile_pipeline

    gateway = KfpGateway(_host(host), namespace=namespace)
    with tempfile.TemporaryDirectory() as folder:
        package = compile_pipeline(experiment, Path(folder) / "pipeline.yaml", cluster)
        return gateway.register_pipeline(str(package), name=name, version=version)
