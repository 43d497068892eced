"""Component: strategy.warmStart's meta-model step, once per study, before the lanes (a CPU step)."""

from kfp.dsl import Dataset, Input


def warm_start(experiment_spec: str, dataset: Input[Dataset]) -> str:
    """Returns the summary as JSON: the configurations enqueued and the model version, or why none."""
    import json

    from kubetune.steps import call

    return json.dumps(call("warm_start.warm_start", experiment_spec, step="warm-start", split_path=dataset.path))
