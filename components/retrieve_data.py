"""Component: retrieve, split and store the experiment's data."""

from kfp.dsl import Dataset, Output


def retrieve_data(experiment_spec: str, dataset: Output[Dataset]) -> str:
    """Load the data source, split it with the spec's seed, save it; returns the data's sha256."""
    import json

    from kubetune.data import load_split, save_split
    from kubetune.spec import parse_experiment

    experiment = parse_experiment(json.loads(experiment_spec))
    split = load_split(experiment.to_dict()["spec"]["data"])
    save_split(split, dataset.path)
    dataset.metadata.update(json.loads(json.dumps(split.metadata)))
    return split.metadata["sha256"]
