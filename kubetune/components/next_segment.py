"""Component: decide whether the experiment goes on after this segment, and record why it stops."""

from typing import NamedTuple


def next_segment(experiment_spec: str, segment: int, cluster_settings: str) -> NamedTuple(
    "Decision", go_on=bool, reason=str
):
    """The segment's exit step: runs even when a lane failed. In a cluster it submits the next run itself."""
    from collections import namedtuple

    from kubetune.steps import call

    decision = call("segments.finish_segment", experiment_spec, segment=int(segment), cluster_settings=cluster_settings)
    return namedtuple("Decision", ["go_on", "reason"])(decision["go_on"], decision["reason"])
