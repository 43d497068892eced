"""Regularized evolution with and without weight inheritance, at equal CPU time, on MNIST-1D's cell space.

    python benchmarks/inheritance_search.py [--seconds 150] [--seeds 0 1 2] [--epochs 6] [--population 10]
        [--tournament 3]

examples/mnist1d-cell.yaml's space, data and trainer; sampler evolution, one lane, no pruner, one torch
thread; each seed searches twice with the same sampler seed, ``strategy.inheritWeights`` off then on,
until the process has spent ``--seconds`` of CPU time (wall time on a dedicated core, and unaffected by
other work on a shared machine). Trials run in this process (inprocess.py), where an inheriting child
copies its parent's weights from memory instead of MLflow. Prints, at four points in time, each run's
incumbent (best validation accuracy so far), its test accuracy and its regret: the best validation
accuracy any run of any seed found, minus the incumbent's; then per arm the mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml
from inprocess import SearchRun, run_inprocess
from raw_results import write_results

from kubetune.spec import parse_experiment

CELL_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist1d-cell.yaml"
ARMS = {"scratch": False, "inherited": True}


def _experiment(args: argparse.Namespace, inherit: bool):
    document = yaml.safe_load(CELL_EXAMPLE.read_text())
    spec = document["spec"]
    sampler = {"name": "evolution", "seed": 0, "population": args.population, "tournament": args.tournament}
    spec["strategy"] = {"sampler": sampler, "pruner": {"name": "none"}, "inheritWeights": inherit}
    spec["budget"] = {"maxTrials": 500, "parallelTrials": 1, "trialsPerSegment": 500}
    spec["trial"]["epochs"] = args.epochs
    return parse_experiment(document)


def incumbent(run: SearchRun, seconds: float) -> tuple[float, float] | None:
    """(validation, test accuracy) of the best trial completed within ``seconds``; None before the first."""
    done = [(value, test) for (at, value, _), test in zip(run.values, run.test_accuracy, strict=True) if at <= seconds]
    return max(done, key=lambda pair: pair[0]) if done else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="CPU seconds per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--tournament", type=int, default=3)
    args = parser.parse_args()
    points = [args.seconds * k / 4 for k in range(1, 5)]
    runs = []
    for seed in args.seeds:
        for arm, inherit in ARMS.items():
            run = run_inprocess(
                _experiment(args, inherit), seed=seed, seconds=args.seconds, clock=time.process_time, threads=1
            )
            runs.append({"seed": seed, "arm": arm, "trials": run.trials, "inherited": run.inherited, "run": run})
            print(
                f"seed {seed} {arm:9s}: {run.trials} trials ({run.inherited} inherited) in {run.wall_seconds:.0f} CPU s"
            )
    best = max(value for r in runs for _, value, _ in r["run"].values)
    print(f"best validation accuracy found by any run: {best:.4f}")
    print(f"{'arm':10}{'seed':>5}" + "".join(f"{f'@{p:.0f}s val/test/regret':>26}" for p in points))
    for r in runs:
        cells = [incumbent(r["run"], p) for p in points]
        r["incumbents"] = {f"{p:.0f}": cell for p, cell in zip(points, cells, strict=True)}
        text = "".join(f"{'-':>26}" if c is None else f"{c[0]:10.4f}{c[1]:8.4f}{best - c[0]:8.4f}" for c in cells)
        print(f"{r['arm']:10}{r['seed']:>5}{text}")
    print(f"{'arm':10}{'at s':>6}{'mean regret':>13}{'stdev':>8}{'min':>8}{'max':>8}{'mean test':>11}")
    for arm in ARMS:
        for p in points:
            found = [r["incumbents"][f"{p:.0f}"] for r in runs if r["arm"] == arm]
            regrets = [best - c[0] for c in found if c is not None]
            if len(regrets) < len(found) or not regrets:
                print(f"{arm:10}{p:6.0f}  a run had no completed trial yet")
                continue
            spread = statistics.stdev(regrets) if len(regrets) > 1 else 0.0
            test = statistics.mean(c[1] for c in found if c is not None)
            mean = statistics.mean(regrets)
            print(f"{arm:10}{p:6.0f}{mean:13.4f}{spread:8.4f}{min(regrets):8.4f}{max(regrets):8.4f}{test:11.4f}")
    for r in runs:
        run = r.pop("run")
        r["values"] = [{"cpu_seconds": at, "val_accuracy": v, "trial": n - 1} for at, v, n in run.values]
        for row, test in zip(r["values"], run.test_accuracy, strict=True):
            row["test_accuracy"] = test
    write_results("inheritance_search", {**vars(args), "best_val_accuracy": best, "runs": runs})


if __name__ == "__main__":
    main()
