"""Component: decide whether the experiment goes on after this segment, and record why it stops."""


def next_segment(experiment_spec: str, segment: int, finish: str, finish_arguments: str) -> str:
    """The segment's exit step: runs even when a lane failed. ``finish`` names the mode's end of a segment
    (``cluster.finish_segment`` submits the next run, ``local.finish_segment`` hands it to the local runner),
    fixed when the pipeline was compiled for that mode; ``finish_arguments`` are its settings as JSON.
    Returns the decision as JSON: ``go_on`` and the ``reason``."""
    import json

    from kubetune.steps import call

    decision = call(finish, experiment_spec, step="next-segment", segment=int(segment), **json.loads(finish_arguments))
    return json.dumps(decision)
