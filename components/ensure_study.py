"""Component: create or load the study, fail stale trials, plan this segment's slots."""

from typing import List


def ensure_study(experiment_spec: str, segment: int) -> List[int]:
    """Returns the slot indices of this segment (empty when the budget is spent)."""
    import json

    from kubetune.segments import start_segment
    from kubetune.spec import parse_experiment

    return start_segment(parse_experiment(json.loads(experiment_spec)), segment=int(segment))
