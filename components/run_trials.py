"""Component: with trial.trialsPerPod > 1, one pod suggests, trains and evaluates several trials in turn."""

from kfp.dsl import Dataset, Input


def run_trials(experiment_spec: str, segment: int, pod: int, dataset: Input[Dataset]) -> str:
    """Returns the trials' outcomes as JSON (number, state, values, metrics, MLflow run id of each)."""
    import json

    from kubetune.steps import call

    outcomes = call(
        "trial_batch.run_trials",
        experiment_spec,
        step="run-trials",
        segment=int(segment),
        pod=int(pod),
        split_path=dataset.path,
    )
    return json.dumps(outcomes)
