"""Random search against the evolution and rl samplers on the digits space, with real training, many seeds.

    python benchmarks/sampler_strategies.py [--trials 30] [--epochs 3] [--population 8] [--tournament 3]
        [--seeds 0 1 2 3 4 5 6 7 8 9] [--strategies random evolution rl]

examples/digits.yaml's space, data and trainer, one lane, no pruner (so every trial informs the sampler and
only the search decisions differ); trials run in this process with the samplers `kubetune run` builds (see
inprocess.py). Prints each run's best validation accuracy after a third, two thirds and all of the budget,
then per strategy the mean, standard deviation and range over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml
from inprocess import run_inprocess
from raw_results import write_results

from kubetune.spec import parse_experiment

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"


def _experiment(args: argparse.Namespace):
    document = yaml.safe_load(DIGITS.read_text())
    spec = document["spec"]
    # Parsed as evolution so that population and tournament are admitted; run_inprocess swaps the name.
    sampler = {"name": "evolution", "seed": 0, "population": args.population, "tournament": args.tournament}
    spec["strategy"] = {"sampler": sampler, "pruner": {"name": "none"}}
    spec["budget"] = {"maxTrials": args.trials, "parallelTrials": 1, "trialsPerSegment": args.trials}
    spec["trial"]["epochs"] = args.epochs
    return parse_experiment(document)


def _best_after(values: list[tuple[float, float, int]], trials: int) -> float:
    return max((value for _, value, asked in values if asked <= trials), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--tournament", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--strategies", nargs="+", default=["random", "evolution", "rl"])
    args = parser.parse_args()
    experiment = _experiment(args)
    budgets = sorted({max(1, args.trials // 3), max(1, 2 * args.trials // 3), args.trials})
    print(f"digits, {args.trials} trials of {args.epochs} epochs, one lane, no pruner; evolution P={args.population}")
    print(f"{'strategy':10}{'seed':>6}" + "".join(f"{f'best@{b}':>10}" for b in budgets) + f"{'wall s':>9}")
    runs = []
    for name in args.strategies:
        for seed in args.seeds:
            run = run_inprocess(experiment, sampler=name, seed=seed)
            bests = [_best_after(run.values, b) for b in budgets]
            print(f"{name:10}{seed:>6}" + "".join(f"{b:10.4f}" for b in bests) + f"{run.wall_seconds:9.1f}", flush=True)
            runs.append({"strategy": name, "seed": seed, "best_after": dict(zip(budgets, bests, strict=True))})
    print(f"{'strategy':10}{'budget':>8}{'mean':>9}{'stdev':>9}{'min':>9}{'max':>9}  over seeds {args.seeds}")
    for name in args.strategies:
        for budget in budgets:
            values = [r["best_after"][budget] for r in runs if r["strategy"] == name]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            mean = statistics.mean(values)
            print(f"{name:10}{budget:>8}{mean:9.4f}{spread:9.4f}{min(values):9.4f}{max(values):9.4f}")
    write_results(
        "sampler_strategies-digits",
        {
            "trials": args.trials,
            "epochs": args.epochs,
            "population": args.population,
            "tournament": args.tournament,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
