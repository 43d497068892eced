"""Component: decide whether the experiment goes on after this segment, and record why it stops."""

from typing import NamedTuple


def next_segment(
    experiment_spec: str, segment: int, registration: str, cluster_settings: str
) -> NamedTuple("Decision", go_on=bool, reason=str):
    """Returns whether another segment should run and why; in a cluster it submits that run itself."""
    import json
    from collections import namedtuple

    from kubetune.segments import finish_segment
    from kubetune.spec import parse_experiment

    decision = finish_segment(
        parse_experiment(json.loads(experiment_spec)), segment=int(segment), cluster_settings=cluster_settings
    )
    return namedtuple("Decision", ["go_on", "reason"])(decision.go_on, decision.reason)
