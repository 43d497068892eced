"""Embedded throughput: `kubetune run` (kfp.local, one subprocess per step) against plain Optuna in-process.

    python benchmarks/embedded_throughput.py [--example examples/mnist1d.yaml] [--trials 12] [--trials-per-pod 1]

Prints trials per minute of each, their ratio (target >= 0.5 on mnist1d), and the per-trial
orchestration overhead: lane time not spent inside training, per trial. Plain Optuna runs twice:
with the same sampler choosing its own trials (what a user would write), and replaying kubetune's
trials (the same parameters and architectures, the same pruner), which trains the same models and
so measures orchestration alone rather than which trials each search happened to pick.
``--trials-per-pod`` sets the spec's trial.trialsPerPod: one kfp.local step runs that many trials in turn.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from inprocess import run_inprocess
from raw_results import write_results

from kubetune.spec import parse_experiment


def _spec(example: str, trials: int, per_pod: int = 1) -> dict:
    data = yaml.safe_load(Path(example).read_text())
    data["metadata"]["name"] = f"bench-{data['metadata']['name']}"
    data["spec"].setdefault("trial", {})["trialsPerPod"] = per_pod
    budget = data["spec"]["budget"]
    budget.update(maxTrials=trials, trialsPerSegment=min(trials, budget.get("trialsPerSegment", trials)))
    data["spec"]["budget"].pop("maxDuration", None)
    return data


# kfp.local's lines in a segment's log: "HH:MM:SS.fff - INFO - Executing task 'name'" and "... Task 'name' finished".
_TASK_LINE = re.compile(r"(\d\d):(\d\d):(\d\d\.\d+) - INFO - (?:Executing task '([^']+)'|Task '([^']+)' finished)")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def step_seconds(log_texts: list[str]) -> dict[str, dict[str, float]]:
    """Per pipeline step: how many ran and their mean seconds from kfp.local starting them to their end.

    Steps of one name run in several lanes at once and their lines interleave; the mean needs only the sums
    of start and end times within a segment's log, not which start belongs to which end. kfp.local now and
    then leaves a step's end line out of the log (one in about forty here); that step's segment is then
    left out of its mean, and counted under ``segments_left_out``.
    """
    sums: dict[str, dict[str, float]] = {}
    for text in log_texts:
        times: dict[str, tuple[list[float], list[float]]] = {}
        for match in _TASK_LINE.finditer(_COLOUR.sub("", text)):
            hours, minutes, seconds, started, ended = match.groups()
            at = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            starts, ends = times.setdefault(started or ended, ([], []))
            (starts if started else ends).append(at)
        for name, (starts, ends) in times.items():
            entry = sums.setdefault(name, {"count": 0, "seconds": 0.0, "segments_left_out": 0})
            if len(starts) != len(ends):
                entry["segments_left_out"] += 1
                continue
            entry["count"] += len(ends)
            entry["seconds"] += sum(ends) - sum(starts)
    return {
        name: {
            "count": entry["count"],
            "mean_seconds": entry["seconds"] / entry["count"] if entry["count"] else None,
            "segments_left_out": entry["segments_left_out"],
        }
        for name, entry in sums.items()
    }


def run_kubetune(data: dict) -> tuple[float, float, int, float, list[dict], dict]:
    """Wall seconds, seconds inside training, trials finished, best value, each trial's parameters, and
    :func:`step_seconds` of the run's steps."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "experiment.yaml"
        path.write_text(yaml.safe_dump(data))
        env = {k: v for k, v in os.environ.items() if k not in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI")}
        env["KUBETUNE_HOME"] = str(Path(folder) / "home")
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "kubetune.cli", "run", str(path)], check=True, env=env, stdout=subprocess.DEVNULL
        )
        wall = time.monotonic() - started
        study = optuna.load_study(
            study_name=data["metadata"]["name"], storage=f"sqlite:///{env['KUBETUNE_HOME']}/optuna.db"
        )
        trained = sum(t.user_attrs.get("train_seconds", 0.0) for t in study.trials)
        logs = sorted((Path(env["KUBETUNE_HOME"]) / "logs").glob("*-segment-*.log"))
        steps = step_seconds([log.read_text() for log in logs])
        return wall, trained, len(study.trials), study.best_value, [t.params for t in study.trials], steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="examples/mnist1d.yaml")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trials-per-pod", type=int, default=1, help="the spec's trial.trialsPerPod")
    args = parser.parse_args()
    data = _spec(args.example, args.trials, args.trials_per_pod)
    experiment = parse_experiment(data)
    lanes = min(experiment.spec.budget.parallel_trials, 2)

    k_wall, k_train, k_trials, k_best, k_params, steps = run_kubetune(data)
    rows = [("kubetune run", k_wall, k_train, k_trials, k_best)]
    for name, plain in (
        ("plain optuna, own trials", run_inprocess(experiment)),
        ("plain optuna, replayed", run_inprocess(experiment, replay=k_params)),
    ):
        rows.append((name, plain.wall_seconds, plain.train_seconds, plain.trials, plain.best))
    runs = [
        {
            "run": name,
            "wall_seconds": wall,
            "train_seconds": trained,
            "trials": trials,
            "trials_per_minute": 60 * trials / wall,
            "overhead_seconds_per_trial": (wall * lanes - trained) / trials,
            "best": best,
        }
        for name, wall, trained, trials, best in rows
    ]
    print(
        f"example {args.example}: {args.trials} trials, {lanes} lanes, {args.trials_per_pod} trial(s) per step, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':26}{'wall s':>9}{'train s':>9}{'trials/min':>12}{'overhead s/trial':>18}{'best':>8}")
    for run in runs:
        print(
            f"{run['run']:26}{run['wall_seconds']:9.1f}{run['train_seconds']:9.1f}{run['trials_per_minute']:12.2f}"
            f"{run['overhead_seconds_per_trial']:18.2f}{run['best']:8.4f}"
        )
    print(
        "kubetune run's steps (kfp.local start to end): "
        + ", ".join(f"{name} {step['mean_seconds'] or 0:.2f} s x {step['count']}" for name, step in steps.items())
    )
    ratios = {run["run"]: runs[0]["trials_per_minute"] / run["trials_per_minute"] for run in runs[1:]}
    for name, ratio in ratios.items():
        print(f"throughput ratio kubetune / {name} = {ratio:.2f}")
    suffix = "" if args.trials_per_pod == 1 else f"-per-pod-{args.trials_per_pod}"
    write_results(
        f"embedded_throughput-{Path(args.example).stem}{suffix}",
        {
            "example": args.example,
            "trials": args.trials,
            "trials_per_pod": args.trials_per_pod,
            "lanes": lanes,
            "runs": runs,
            "kubetune_steps": steps,
            "throughput_ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
