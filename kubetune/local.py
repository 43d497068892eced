"""Embedded mode: run the search pipeline through kfp.local, segment after segment, on a laptop.

The runner is the local stand-in for the cluster's next-segment submission: it starts segment N+1
when segment N's last step decided to go on. The study is the only state, so re-running resumes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubetune import settings
from kubetune.errors import UserError
from kubetune.periodic import every
from kubetune.segments import segments_finished, start_segment
from kubetune.spec import Experiment
from kubetune.stepserver import serving
from kubetune.study import best_trial, count_trials, decide, load_study, plan_slots, seconds_until_stale

__all__ = ["Progress", "StepFailed", "run_experiment"]

USER_ERROR_LINE = re.compile(r"kubetune\.[\w.]+\.(?:SpecError|DataError|StudyError|TrackingError): (.*)")


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


def _run_segment(experiment: Experiment, segment: int, log_path: Path, *, verbose: bool) -> None:
    from kubetune.pipelines import build_pipeline

    pipeline = build_pipeline(experiment)
    with contextlib.ExitStack() as stack:
        if not verbose:
            log = stack.enter_context(log_path.open("w"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        try:
            pipeline(experiment_spec=experiment.to_json(), segment=segment)
        except RuntimeError as error:
            stack.close()
            raise _explain(error, log_path, verbose) from None


def _explain(error: RuntimeError, log_path: Path, verbose: bool) -> Exception:
    """A user mistake found inside a step becomes a UserError; anything else names the step that failed
    first, with its trial and the error it ended with where the log shows them, and points at the log."""
    text = "" if verbose else log_path.read_text(errors="replace")
    found = USER_ERROR_LINE.findall(text)
    if found:
        return UserError(found[-1])
    where = "above" if verbose else f"in {log_path}"
    # kfp.local logs each step as "Executing task '<name>'", its executor input, its output, then its status.
    failed = [step for step in text.split("Executing task ")[1:] if re.search(r"finished with status \S*FAILURE", step)]
    if not failed:
        return StepFailed(f"a pipeline step failed: {str(error).splitlines()[0][:300]}; see the step's log {where}")
    name = re.match(r"\S*?'([\w-]+)'", failed[0])
    trial = re.search(r'"trial_number": (\d+)', failed[0])
    raised = re.findall(  # the last exception line, without the step server's wrapper
        r"^\s*(?:kubetune\.steps\.StepFailed: )?(?:builtins\.)?([A-Za-z_][\w.]*(?:Error|Exception|Failed): .*)$",
        failed[0],
        re.MULTILINE,
    )
    what = f"step {name.group(1) if name else '?'!r}" + (f" of trial {trial.group(1)}" if trial else "")
    why = f" with {raised[-1][:300]}" if raised else ""
    return StepFailed(f"a pipeline step failed: {what} ended{why}; see the step's log {where}")


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
    """Run segments until the budget or a stop rule ends the experiment; returns the stop reason."""
    import kfp.local

    os.environ.update(settings.embedded_environment())
    os.environ.setdefault("KUBETUNE_TRAIN_THREADS", _train_threads(experiment))
    home = settings.home()
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(home / "kfp"), enable_caching=True
    )
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with serving(home / "logs" / "step-server.log"):  # its imports overlap this process's first study work
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
                _run_segment(
                    experiment, segment, home / "logs" / f"{experiment.name}-segment-{segment}.log", verbose=verbose
                )
            study = load_study(experiment)
            report(_progress(study, experiment, segment))
            if study.user_attrs.get("stop_reason"):
                return study.user_attrs["stop_reason"]
            segment += 1
