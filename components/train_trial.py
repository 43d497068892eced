"""Component: train one trial, reporting every epoch to the pruner; exits 0 when pruned or failed."""

from kfp.dsl import Artifact, Dataset, Input, Output


def train_trial(experiment_spec: str, trial_number: int, dataset: Input[Dataset], predictions: Output[Artifact]) -> str:
    """Returns the training result as JSON; writes the held-out class scores. The weights of a completed
    trial go to MLflow from here, not through the pipeline's artifact store, so they are stored once."""
    import json
    import tempfile
    from pathlib import Path

    from kubetune.steps import call

    with tempfile.TemporaryDirectory() as folder:
        result = call(
            "search.train_trial",
            experiment_spec,
            step="train-trial",
            number=int(trial_number),
            split_path=dataset.path,
            model_path=str(Path(folder) / "model.pt"),
            predictions_path=predictions.path,
        )
    return json.dumps(result)
