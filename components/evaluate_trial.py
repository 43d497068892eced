"""Component: held-out metrics, the MLflow child run, and the study's tell, done once."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def evaluate_trial(
    experiment_spec: str,
    trial_number: int,
    train_result: str,
    predictions: Input[Artifact],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Returns the trial's outcome as JSON: number, state, objective values, metrics, MLflow run id."""
    import json

    from kubetune.steps import call

    outcome = call(
        "evaluate.evaluate_trial",
        experiment_spec,
        step="evaluate-trial",
        number=int(trial_number),
        result=json.loads(train_result),
        predictions_path=predictions.path,
        split_path=dataset.path,
    )
    for name, value in outcome["metrics"].items():
        metrics.log_metric(name, value)
    return json.dumps(outcome)
