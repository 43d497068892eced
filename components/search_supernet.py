"""Component: the supernet work of strategy.oneShot or sampler darts, once per study, before the lanes."""

from kfp.dsl import Dataset, Input


def search_supernet(experiment_spec: str, dataset: Input[Dataset]) -> str:
    """Returns the summary as JSON: the candidates enqueued (oneShot) or the cells DARTS derived (darts)."""
    import json

    from kubetune.steps import call

    return json.dumps(
        call("supernet_step.search_supernet", experiment_spec, step="search-supernet", split_path=dataset.path)
    )
