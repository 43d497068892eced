"""Component: train one trial, reporting every epoch to the pruner; exits 0 when pruned or failed."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def train_trial(
    experiment_spec: str, trial_number: int, dataset: Input[Dataset], model: Output[Model], predictions: Output[Artifact]
) -> str:
    """Returns the training result as JSON; writes the model and its held-out class scores."""
    import json

    from kubetune.steps import call

    result = call("search.train_trial", experiment_spec, number=int(trial_number), split_path=dataset.path,
                  model_path=model.path, predictions_path=predictions.path)
    model.metadata.update({"trial": int(trial_number), "status": result["status"]})
    return json.dumps(result)
