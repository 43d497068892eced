"""Search quality on MNIST-1D: the example's default strategy (TPE + Hyperband) against random search.

    python benchmarks/search_quality.py [--example examples/mnist1d.yaml] [--seeds 0 1 2] [--target 0.96]

Same budget, space, trainer and data for both; trials run in one process with the same sampler
and pruner objects `kubetune run` builds (see inprocess.py), so only the search decisions differ.
Prints, per strategy and seed: seconds and trials until a trial first reached the target validation
accuracy, and the best accuracy after the whole budget.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from inprocess import run_inprocess
from raw_results import write_results

from kubetune.spec import load_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="examples/mnist1d.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.96)
    args = parser.parse_args()
    experiment = load_experiment(args.example)
    default = experiment.spec.strategy.sampler.name
    budget = experiment.spec.budget
    print(f"{args.example}: {budget.max_trials} trials, {budget.parallel_trials} lanes, target {args.target}")
    print(f"{'strategy':10}{'seed':>6}{'s to target':>13}{'trials to target':>18}{'best acc':>10}{'wall s':>9}")
    bests: dict[str, list[float]] = {}
    runs = []
    for name in (default, "random"):
        for seed in args.seeds:
            run = run_inprocess(experiment, sampler=name, seed=seed)
            reached = run.first_reaching(args.target)
            seconds, trials = reached if reached else (float("nan"), "never")
            print(f"{name:10}{seed:>6}{seconds:13.1f}{trials!s:>18}{run.best:10.4f}{run.wall_seconds:9.1f}", flush=True)
            bests.setdefault(name, []).append(run.best)
            runs.append(
                {
                    "strategy": name,
                    "seed": seed,
                    "seconds_to_target": reached[0] if reached else None,
                    "trials_to_target": reached[1] if reached else None,
                    "best": run.best,
                    "wall_seconds": run.wall_seconds,
                    "train_seconds": run.train_seconds,
                    "completed": [
                        {"seconds": s, "value": value, "trials_asked": asked} for s, value, asked in run.values
                    ],
                }
            )
    for name, values in bests.items():
        print(f"{name}: mean best {statistics.mean(values):.4f} over seeds {args.seeds}")
    write_results(
        f"search_quality-{Path(args.example).stem}",
        {
            "example": args.example,
            "target": args.target,
            "max_trials": budget.max_trials,
            "lanes": budget.parallel_trials,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
