"""Embedded mode: run the search pipeline through kfp.local, segment after segment, on a laptop.

The runner is embedded mode's "submit the next segment": the pipeline is built for :data:`EMBEDDED`,
whose exit step ends the segment with :func:`finish_segment`, which hands the next segment to this
runner; the runner starts it when the run returns. Steps hand the runner their failures the same way,
as data (see :mod:`kubetune.steps`). The study is the only state, so re-running resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune import segments, settings
from kubetune.errors import UserError
from kubetune.periodic import every
from kubetune.segments import segments_finished, start_segment
from kubetune.spec import Experiment
from kubetune.steps import INBOX_ENV, tell_runner
from kubetune.stop_rules import Decision, count_trials, decide, plan_slots
from kubetune.study import best_trial, load_study, seconds_until_stale

__all__ = ["Progress", "StepFailed", "finish_segment", "run_experiment"]


class StepFailed(RuntimeError):
    """A pipeline step failed for a reason that is not the user's input; the message points at its log."""


@dataclass(frozen=True)
class Progress:
    """What the progress display shows."""

    segment: int
    done: int
    budget: int
    running: int
    best: float | None


def _progress(study, experiment: Experiment, segment: int) -> Progress:
    counts = count_trials(study)
    best = best_trial(study, experiment)
    return Progress(
        segment,
        counts.consumed,
        experiment.spec.budget.max_trials,
        counts.running,
        None if best is None else best.values[0],
    )


def _train_threads(experiment: Experiment) -> str:
    """Share the machine's cores between the lanes that kfp.local runs at once (at most 2)."""
    lanes = min(experiment.spec.budget.parallel_trials, 2)
    return str(max(1, (os.cpu_count() or 1) // lanes))


def _poll(study, experiment: Experiment, segment: int, report: Callable[[Progress], None]):
    def refresh() -> None:
        with contextlib.suppress(Exception):  # a busy SQLite file: skip this refresh
            report(_progress(study, experiment, segment))

    return every(1.0, refresh, name="progress")


def finish_segment(experiment: Experiment, *, segment: int) -> Decision:
    """The exit step of a segment that `kubetune run` runs: the runner, waiting for this run, starts the next."""
    return segments.finish_segment(experiment, segment=segment, submit_next=_hand_to_runner)


def _hand_to_runner(experiment: Experiment, segment: int) -> None:
    tell_runner({"kind": "next", "segment": segment})


@contextlib.contextmanager
def _inbox(path: Path) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The file the steps of one segment run append their records to; yields its reader."""
    path.write_text("")
    os.environ[INBOX_ENV] = str(path)
    try:
        yield lambda: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    finally:
        os.environ.pop(INBOX_ENV, None)


def _run_segment(experiment: Experiment, segment: int, logs: Path, *, verbose: bool) -> int | None:
    """Run one segment's pipeline; returns the segment its exit step handed on, None when the experiment stops."""
    from kubetune.pipelines import EMBEDDED, build_pipeline

    pipeline = build_pipeline(experiment, EMBEDDED)
    log_path = logs / f"{experiment.name}-segment-{segment}.log"
    with _inbox(logs / f"{experiment.name}-segment-{segment}.steps.jsonl") as handed, contextlib.ExitStack() as stack:
        if not verbose:
            log = stack.enter_context(log_path.open("w"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            pipeline(experiment_spec=experiment.to_json(), segment=segment)
        except RuntimeError as error:
            stack.close()
            raise _explain(error, handed(), "above" if verbose else f"in {log_path}") from None
        following = [record["segment"] for record in handed() if record["kind"] == "next"]
    return following[-1] if following else None


def _explain(error: RuntimeError, handed: list[dict[str, Any]], where: str) -> Exception:
    """A user mistake found inside a step becomes a UserError; anything else names the step that failed
    first, with its trial and the error it ended with where the step told us, and points at the log."""
    failures = [record for record in handed if record["kind"] == "failure"]
    mistakes = [record for record in failures if record["user_error"]]
    if mistakes:
        return UserError(mistakes[0]["message"])
    if not failures:  # the step died before it could tell (killed, out of memory): kfp.local's own words
        return StepFailed(f"a pipeline step failed: {str(error).splitlines()[0][:300]}; see the step's log {where}")
    first = failures[0]
    what = f"step {first['step']!r}" + ("" if first["trial"] is None else f" of trial {first['trial']}")
    why = f"{first['type']}: {first['message']}".splitlines()[0][:300]
    return StepFailed(f"a pipeline step failed: {what} ended with {why}; see the step's log {where}")


def _wait_for_slots(study, experiment: Experiment, segment: int):
    """Wait while trials of an earlier, killed run still hold the rest of the budget, until they go stale.

    Their heartbeats stop (or never started), so after the grace period `start_segment` fails them and
    queues their retries. Each wait is announced with the time left, since nothing else moves meanwhile.
    """
    while not plan_slots(study, experiment) and (running := count_trials(study).running):
        print(
            f"kubetune: {running} trial(s) of an earlier run still hold the rest of the budget; waiting for "
            f"their heartbeats to go stale (at most {seconds_until_stale(study) or 0:.0f} s more if they "
            "stopped), then they are failed and retried",
            file=sys.stderr,
        )
        time.sleep(experiment.spec.trial.heartbeat_seconds)
        start_segment(experiment, segment=segment)
        study = load_study(experiment)
    return study


def run_experiment(experiment: Experiment, *, report: Callable[[Progress], None], verbose: bool = False) -> str:
    """Run segments until the budget or a stop rule ends the experiment; returns the stop reason.

    Steps hand their work to the warm step server when the caller started one (`kubetune run` does, first
    thing); without it each step does its work in its own process, as in a cluster.
    """
    import kfp.local

    os.environ.update(settings.embedded_environment())
    os.environ.setdefault("KUBETUNE_TRAIN_THREADS", _train_threads(experiment))
    home = settings.home()
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(home / "kfp"), enable_caching=True
    )
    logs = settings.logs_folder()
    start_segment(experiment, segment=0)  # fails fast, in this process, on a bad database or MLflow URI
    study = load_study(experiment)
    segment = study.user_attrs.get("segment", 0)
    if segment:
        decision = decide(study, experiment, segments_finished=segments_finished(study))
        if not decision.go_on:
            return decision.reason
        study.set_user_attr("stop_reason", None)
    while True:
        report(_progress(study, experiment, segment))
        study = _wait_for_slots(study, experiment, segment)
        with _poll(study, experiment, segment, report):
            following = _run_segment(experiment, segment, logs, verbose=verbose)
        study = load_study(experiment)
        report(_progress(study, experiment, segment))
        if following is None:
            return study.user_attrs["stop_reason"]
        segment = following
