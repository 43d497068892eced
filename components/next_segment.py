"""Component: decide whether the experiment goes on after this segment, and record why it stops."""

from typing import NamedTuple


def next_segment(
    experiment_spec: str, segment: int, registration: str, cluster_settings: str
) -> NamedTuple("Decision", go_on=bool, reason=str):
    """Returns whether another segment should run and why; in a cluster it submits that run itself."""
    from collections import namedtuple

    from kubetune.steps import call

    decision = call("segments.finish_segment", experiment_spec, segment=int(segment), cluster_settings=cluster_settings)
    return namedtuple("Decision", ["go_on", "reason"])(decision["go_on"], decision["reason"])
