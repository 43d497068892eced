"""Component: create or load the study, fail stale trials, plan this segment's slots."""


def ensure_study(experiment_spec: str, segment: int) -> list[int]:
    """Returns the slot indices of this segment (empty when the budget is spent)."""
    from kubetune.steps import call

    return call("segments.start_segment", experiment_spec, step="ensure-study", segment=int(segment))
