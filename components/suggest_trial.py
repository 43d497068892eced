"""Component: ask the study for the next trial, just in time."""


def suggest_trial(experiment_spec: str, segment: int, slot: int) -> int:
    """Returns the number of the trial this lane will train."""
    import json

    from kubetune.search import suggest_trial as suggest
    from kubetune.spec import parse_experiment

    return suggest(parse_experiment(json.loads(experiment_spec)), segment=int(segment), slot=int(slot))
