"""The search pipeline: one segment of the cyclic search.

    ExitHandler[ retrieve data -> ensure study [-> search supernet] [-> warm start]
                 -> ParallelFor[ suggest -> train -> evaluate ] -> register best ] -> next segment

The search-supernet step is there only for strategy.oneShot or sampler darts; it runs in a trial pod. The
warm-start step is there only for strategy.warmStart; a CPU step, it enqueues the meta model's picks.
With trial.trialsPerPod > 1 each ParallelFor item is one run-trials step (a trial pod) that runs the
suggest, train and evaluate work of several trials in turn.

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

from pathlib import Path

from kfp import compiler, dsl

from kubetune.cluster_settings import ClusterSettings
from kubetune.components import build
from kubetune.pipelines.targets import InCluster, Target
from kubetune.spec import Experiment

__all__ = ["build_pipeline", "compile_pipeline"]


def _data_is_pinned(experiment: Experiment) -> bool:
    """Whether the data step may be cached on its inputs: only when the source cannot change under the same spec."""
    data = experiment.spec.data
    return data.source.startswith("builtin:") or bool(data.sha256)


def build_pipeline(experiment: Experiment, target: Target):
    """The segment pipeline of ``experiment``, built for ``target`` (:data:`EMBEDDED` or :class:`InCluster`)."""
    steps = {
        name: build(name, image=target.image)
        for name in (
            "retrieve-data",
            "ensure-study",
            "warm-start",
            "suggest-trial",
            "evaluate-trial",
            "register-best",
            "next-segment",
        )
    }
    train = build("train-trial", image=target.trainer_image(experiment))
    lanes = experiment.spec.budget.parallel_trials

    def settle(task: dsl.PipelineTask, *, cache: bool = False, step: bool = True) -> dsl.PipelineTask:
        """Caching off unless asked; what the target adds to every step (resources only to non-trial steps)."""
        task.set_caching_options(cache)
        target.step(task, resources=step)
        return task

    def lane(experiment_spec, suggested: dsl.PipelineTask, data: dsl.PipelineTask) -> dsl.PipelineTask:
        """Train and evaluate the suggested trial; suggest-trial returns -1 (no trial) once a stop rule holds,
        and the lane then trains nothing."""
        with dsl.If(suggested.output >= 0, name="trial-suggested"):
            trained = settle(
                train(experiment_spec=experiment_spec, trial_number=suggested.output, dataset=data.outputs["dataset"]),
                step=False,
            )
            target.trial_pod(trained, experiment)
            return settle(
                steps["evaluate-trial"](
                    experiment_spec=experiment_spec,
                    trial_number=suggested.output,
                    train_result=trained.outputs["Output"],
                    predictions=trained.outputs["predictions"],
                    dataset=data.outputs["dataset"],
                )
            )

    @dsl.pipeline(
        name=f"kubetune-{experiment.name}",
        description=f"kubetune search segment for experiment {experiment.name}: suggest, train and evaluate "
        f"up to {experiment.spec.budget.trials_per_segment} trials, {lanes} at a time, then register the best model.",
    )
    def search_segment(experiment_spec: str = experiment.to_json(), segment: int = 0):
        """One segment of a kubetune search.

        Args:
            experiment_spec: The experiment spec as JSON (apiVersion kubetune/v1alpha1). The default is the spec this pipeline was compiled from; it holds no credentials.
            segment: Index of this segment, 0 for the first run. The next-segment step starts segment + 1 (in a cluster, it submits that run).
        """
        finish = settle(
            steps["next-segment"](
                experiment_spec=experiment_spec,
                segment=segment,
                finish=target.finish,
                finish_arguments=target.finish_arguments,
            )
        )
        target.exit_step(finish)
        with dsl.ExitHandler(finish, name="segment"):
            # Cached only for a source that cannot change under the same spec (a builtin or a pinned sha256).
            data = settle(steps["retrieve-data"](experiment_spec=experiment_spec), cache=_data_is_pinned(experiment))
            plan = settle(steps["ensure-study"](experiment_spec=experiment_spec, segment=segment))
            if experiment.spec.uses_supernet:  # once per study; later segments' steps return at once
                supernet = settle(
                    build("search-supernet", image=target.trainer_image(experiment))(
                        experiment_spec=experiment_spec, dataset=data.outputs["dataset"]
                    ).after(plan),
                    step=False,
                )
                target.trial_pod(supernet, experiment)
            if experiment.spec.strategy.warm_start is not None:  # once per study, like the supernet step
                warm = settle(
                    steps["warm-start"](experiment_spec=experiment_spec, dataset=data.outputs["dataset"]).after(plan)
                )
            with dsl.ParallelFor(items=plan.output, parallelism=lanes) as slot:
                if experiment.spec.trial.trials_per_pod > 1:  # the slot is a pod that runs several trials in turn
                    last = settle(
                        build("run-trials", image=target.trainer_image(experiment))(
                            experiment_spec=experiment_spec, segment=segment, pod=slot, dataset=data.outputs["dataset"]
                        ),
                        step=False,
                    )
                    target.trial_pod(last, experiment)
                    first = last
                else:
                    first = settle(steps["suggest-trial"](experiment_spec=experiment_spec, segment=segment, slot=slot))
                    last = lane(experiment_spec, first, data)
                if experiment.spec.uses_supernet:
                    first.after(supernet)
                if experiment.spec.strategy.warm_start is not None:
                    first.after(warm)
            settle(steps["register-best"](experiment_spec=experiment_spec).after(last))

    return search_segment


def compile_pipeline(experiment: Experiment, output: str | Path, cluster: ClusterSettings) -> Path:
    """Write the pipeline YAML, built for a cluster with ``cluster`` settings, that a user uploads in the Kubeflow UI."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(experiment, InCluster(cluster)), str(output))
    return output
