"""Component: retrieve, split and store the experiment's data."""

from kfp.dsl import Dataset, Output


def retrieve_data(experiment_spec: str, dataset: Output[Dataset]) -> str:
    """Load the data source, split it with the spec's seed, save it; returns the data's sha256."""
    from kubetune.steps import call

    metadata = call("data.retrieve", experiment_spec, step="retrieve-data", path=dataset.path)
    dataset.metadata.update(metadata)
    return metadata["sha256"]
