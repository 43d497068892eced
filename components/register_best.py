"""Component: register the best model in MLflow; move the alias only if it beats the champion."""


def register_best(experiment_spec: str) -> str:
    """Runs after every lane of the segment succeeded; returns the registration as JSON."""
    import json

    from kubetune.steps import call

    return json.dumps(call("segments.register_new_best", experiment_spec, step="register-best"))
