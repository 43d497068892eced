"""Component: register the best model in MLflow; move the alias only if it beats the champion."""

from typing import List


def register_best(experiment_spec: str, outcomes: List[str]) -> str:
    """Runs after every lane of the segment (``outcomes`` are their results); returns the registration as JSON."""
    import json

    from kubetune.segments import register_new_best
    from kubetune.spec import parse_experiment

    return json.dumps(register_new_best(parse_experiment(json.loads(experiment_spec))))
