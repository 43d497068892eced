"""Replay kubetune's pruners under random search against the tabular NAS benchmark: epochs spent and regret.

    python benchmarks/pruner_replay.py [--table benchmarks/data/nas_table_mnist1d.jsonl.gz] [--seeds 20]
        [--budgets 10 25 50] [--pruners none median asha hyperband curve] [--jobs 1]

Each run is nas_strategies.py's replay of the random sampler with one pruner (the spec's defaults, the
table's epochs as trial.epochs): the trial reports the table's validation accuracy after each epoch and
the pruner may stop it. The random sampler with the same seed draws the same architectures under every
pruner, so the pruners are compared on the same trials. Prints, per pruner, the epochs spent and the
incumbent's regret after each trial budget, and the regret after each budget of epochs (that many full
trainings' worth), with the share of runs each pruner beats no pruning in; writes the raw JSON.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nas_strategies import MAX_TRIAL_FACTOR, Table, load, replay, replay_options_problem, summarise
from nas_table import OUTPUT
from raw_results import RESULTS, write_results

from kubetune.spec import PRUNERS

DEFAULT_PRUNERS = ["none", "median", "asha", "hyperband", "curve"]


def strategy(pruner: str) -> str:
    """nas_strategies.py's name for random search under ``pruner``; without one it is plain "random"."""
    return "random" if pruner == "none" else f"random+{pruner}"


def _replay(table: Table, run: tuple[str, int], *, trials: int) -> list[dict]:
    pruner, seed = run
    # Runs go on past ``trials`` until they spent as many seconds as ``trials`` full trainings, so the
    # pruned ones also reach the epoch budgets (capped at MAX_TRIAL_FACTOR times the trials).
    return replay(table, strategy(pruner), seed=seed, trials=trials, seconds=trials * table.full_seconds)


def epochs_after_trials(curves: list[list[dict]], trials: int) -> dict:
    """The epochs the runs had trained once ``trials`` trials were done: mean, standard deviation, range."""
    spent = [curve[min(trials, len(curve)) - 1]["epochs"] for curve in curves]
    return {
        "mean": statistics.mean(spent),
        "std": statistics.stdev(spent) if len(spent) > 1 else 0.0,
        "min": min(spent),
        "max": max(spent),
    }


def _by_epochs(curve: list[dict]) -> list[dict]:
    """The run with epochs on the axis summarise() reads as seconds, to reuse it for equal-epoch budgets."""
    return [{"seconds": point["epochs"], "regret": point["regret"]} for point in curve]


def _row(label: str, budget: float, regret: dict, epochs: dict | None) -> str:
    def number(value: float | None, width: int = 9, digits: int = 4) -> str:
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    text = f"{label:12}{budget:>8}" + "".join(number(regret.get(k)) for k in ("mean", "std", "median"))
    text += number(regret.get("beats_random"), 8, 2)
    if epochs is not None:
        text += number(epochs["mean"], 10, 1) + number(epochs["std"], 8, 1)
    return text + f"{regret['without_incumbent']:>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=OUTPUT)
    parser.add_argument("--seeds", type=int, default=20, help="replay seeds 0 to N-1 per pruner")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 25, 50], help="trial budgets")
    parser.add_argument("--pruners", nargs="+", default=DEFAULT_PRUNERS, choices=PRUNERS)
    parser.add_argument("--jobs", type=int, default=1, help="replays run in parallel processes")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the raw JSON")
    args = parser.parse_args(argv)
    if problem := replay_options_problem(args):
        print(problem, file=sys.stderr)
        return 2
    table = load(args.table)
    budgets = sorted(set(args.budgets))
    print(
        f"{args.table.name}: {len(table.runs)} architectures, {table.epochs} epochs, best mean test accuracy "
        f"{table.best_test:.4f}; random search, {args.seeds} seeds per pruner, at most "
        f"{MAX_TRIAL_FACTOR * budgets[-1]} trials"
    )
    runs = [(pruner, seed) for pruner in args.pruners for seed in range(args.seeds)]
    curves: dict[str, list[list[dict]]] = {strategy(pruner): [] for pruner in args.pruners}
    with ProcessPoolExecutor(args.jobs) as pool:
        done = pool.map(functools.partial(_replay, table, trials=budgets[-1]), runs)
        for (pruner, _), curve in zip(runs, done, strict=True):
            curves[strategy(pruner)].append(curve)
    by_trials = summarise(curves, budgets, [])
    epoch_budgets = [float(b * table.epochs) for b in budgets]
    by_epochs = summarise({s: [_by_epochs(c) for c in runs] for s, runs in curves.items()}, [], epoch_budgets)
    epochs = {s: {b: epochs_after_trials(runs, b) for b in budgets} for s, runs in curves.items()}
    header = f"{'pruner':12}{'budget':>8}{'mean':>9}{'std':>9}{'median':>9}{'beats':>8}"
    print("\nregret (best mean test accuracy minus the incumbent's) and epochs trained, after each trial budget")
    print("beats: the share of (run, unpruned run) pairs where the run's regret is lower; 0.5 is a tie")
    print(header + f"{'epochs':>10}{'std':>8}{'no inc.':>8}")
    for pruner in args.pruners:
        for budget in budgets:
            name = strategy(pruner)
            print(_row(pruner, budget, by_trials[name]["trials"][budget], epochs[name][budget]))
    print(f"\nregret after each budget of epochs ({table.epochs} epochs = one full training)")
    print(header + f"{'no inc.':>8}")
    for pruner in args.pruners:
        for budget in epoch_budgets:
            print(_row(pruner, int(budget), by_epochs[strategy(pruner)]["seconds"][budget], None))
    raw = {
        "table": args.table.name,
        "table_header": table.header,
        "architectures": len(table.runs),
        "best_test_accuracy": table.best_test,
        "regret_of": "best mean test accuracy in the table minus the incumbent's (best final validation accuracy)",
        "sampler": "random",
        "seeds": args.seeds,
        "budgets": budgets,
        "epoch_budgets": epoch_budgets,
        "regret_after_trials": {s: by_trials[s]["trials"] for s in curves},
        "epochs_after_trials": epochs,
        "regret_after_epochs": {s: by_epochs[s]["seconds"] for s in curves},
        "curves": curves,
    }
    write_results(f"pruner_replay-{args.table.name.split('.')[0]}", raw, folder=args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
