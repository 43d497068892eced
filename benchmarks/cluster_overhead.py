"""What a trial pays in a cluster beyond its training: a model, with the parts that run here measured.

    python benchmarks/cluster_overhead.py [--repeats 5] [--pod-start 5 2] [--study-read 2.0] [--per-pod 1 4]

Per trial, KFP 2.17 on Argo runs these pods one after another (backend/src/v2/compiler/argocompiler,
dag.go and container.go at 2.17.0): the loop iteration's DAG driver; suggest-trial's container driver and
its executor; the trial-suggested condition's DAG driver; train-trial's driver and executor; evaluate-trial's
driver and executor: 8 pod starts on the trial's critical path. Kubernetes' pod start-up SLO bounds each
(p99 <= 5 s, image pull and init containers excluded: kubernetes/community,
sig-scalability/slos/pod_startup_latency.md); ``--pod-start`` gives the seconds per pod to model (the
bound, and a faster cluster). Images are pulled once per node (IfNotPresent), so a pull is left out.

Measured here: each executor's own start-up, a fresh Python process importing KFP's executor and what the
step's body imports (in a cluster nothing is warm: embedded mode's step server does not exist there), and
``--study-read``: the suggest step's reading of the study (2.0 s at 5,000 trials in "Study throughput";
benchmarks/study_scale.py measures it by study size).

With ``trial.trialsPerPod`` k > 1 (kubetune.trial_batch) a slot is one run-trials pod running k trials:
3 pods (the iteration's DAG driver, the container driver, the pod) and one process start-up per k trials,
and the study read per trial.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from raw_results import write_results

PODS_PER_TRIAL = 8
STEP_IMPORTS = {
    "suggest-trial": "import kfp.dsl.executor_main, kubetune.search, kubetune.study, kubetune.space, optuna",
    "train-trial": "import kfp.dsl.executor_main, kubetune.search, kubetune.nas, kubetune.train, kubetune.tracking, torch",
    "evaluate-trial": "import kfp.dsl.executor_main, kubetune.evaluate, kubetune.tracking, kubetune.registry",
}
# trial.trialsPerPod > 1: one run-trials pod (its driver, the iteration's DAG driver, the pod) per k trials.
BATCH_IMPORTS = "import kfp.dsl.executor_main, kubetune.trial_batch, kubetune.nas, kubetune.train, torch"
PODS_PER_BATCH = 3
TRIAL_MINUTES = (1, 5, 30)


def start_up(code: str, repeats: int) -> dict:
    """Wall seconds of a fresh interpreter running ``code``: median and spread over ``repeats``."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        seconds.append(time.perf_counter() - started)
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "seconds": seconds}


def model(step_seconds: dict[str, float], *, pod_start: float, study_read: float, per_pod: int = 1) -> dict:
    """Overhead per trial and its share of a trial of 1, 5 and 30 minutes of training; with ``per_pod`` > 1
    the pods and the process start-up of one run-trials step are shared by ``per_pod`` trials."""
    if per_pod == 1:
        overhead = PODS_PER_TRIAL * pod_start + sum(step_seconds.values()) + study_read
    else:
        overhead = (PODS_PER_BATCH * pod_start + step_seconds["run-trials"]) / per_pod + study_read
    return {
        "pod_start": pod_start,
        "trials_per_pod": per_pod,
        "overhead_seconds": overhead,
        "share": {minutes: overhead / (overhead + 60 * minutes) for minutes in TRIAL_MINUTES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per step")
    parser.add_argument("--pod-start", type=float, nargs="+", default=[5.0, 2.0], help="seconds per pod start")
    parser.add_argument("--study-read", type=float, default=2.0, help="seconds the suggest step reads the study")
    parser.add_argument("--per-pod", type=int, nargs="+", default=[1, 4], help="trial.trialsPerPod values to model")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.per_pod) < 1 or min(args.pod_start) < 0 or args.study_read < 0:
        print("--repeats and --per-pod must be positive, --pod-start and --study-read not negative", file=sys.stderr)
        return 2
    start_up("import kfp.dsl.executor_main", 1)  # warms the file cache, as a node that ran a step before has it
    steps = {step: start_up(code, args.repeats) for step, code in {**STEP_IMPORTS, "run-trials": BATCH_IMPORTS}.items()}
    for step, found in steps.items():
        print(
            f"{step}: fresh process start-up {found['median']:.2f} s (min {found['min']:.2f}, max {found['max']:.2f})"
        )
    per_step = {step: found["median"] for step, found in steps.items() if step in STEP_IMPORTS}
    batch = {"run-trials": steps["run-trials"]["median"]}
    models = [
        model(per_step if k == 1 else batch, pod_start=pod, study_read=args.study_read, per_pod=k)
        for pod in args.pod_start
        for k in args.per_pod
    ]
    for found in models:
        shares = ", ".join(f"{minutes} min {share:.0%}" for minutes, share in found["share"].items())
        print(
            f"pods starting in {found['pod_start']:.1f} s, {found['trials_per_pod']} trial(s) per pod: "
            f"{found['overhead_seconds']:.1f} s per trial; share of a trial training {shares}"
        )
    write_results(
        "cluster_overhead",
        {
            "pods_per_trial": PODS_PER_TRIAL,
            "options": vars(args),
            "step_start_up": steps,
            "models": models,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
