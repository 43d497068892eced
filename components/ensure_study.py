"""Component: create or load the study, fail stale trials, plan this segment's slots."""

from typing import List


def ensure_study(experiment_spec: str, segment: int) -> List[int]:
    """Returns the slot indices of this segment (empty when the budget is spent)."""
    from kubetune.steps import call

    return call("segments.start_segment", experiment_spec, segment=int(segment))
