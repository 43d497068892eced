"""Component: ask the study for the next trial, just in time."""


def suggest_trial(experiment_spec: str, segment: int, slot: int) -> int:
    """Returns the number of the trial this lane will train."""
    from kubetune.steps import call

    return call("search.suggest_trial", experiment_spec, step="suggest-trial", segment=int(segment), slot=int(slot))
