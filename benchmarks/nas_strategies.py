"""Replay search strategies against the tabular NAS benchmark (nas_table.py's file) in seconds, many seeds.

    python benchmarks/nas_strategies.py [--table benchmarks/data/nas_table_mnist1d.jsonl.gz] [--seeds 20]
        [--budgets 10 25 50] [--strategies random tpe gp cmaes evolution rl tpe+hyperband random+hyperband]

Each strategy is kubetune's own sampler and pruner (kubetune.samplers) on an experiment whose architecture
space is the table's, in an in-memory Optuna study: kubetune.space.sample draws an architecture, the trial
reports the table's validation accuracy after each epoch (of the training seed the replay seed picks), so a
pruner can stop it, and its simulated cost is the table's seconds for the epochs it ran. The incumbent is the
complete trial with the best final validation accuracy, as the study would pick it; its regret is the best
test accuracy in the table minus the incumbent's, both the mean over the table's training seeds. Prints the
mean, standard deviation and quartiles of regret after each trial budget and after each simulated-seconds
budget (that budget in full-trainings' worth of mean seconds), writes every run's curve as raw JSON and a
plot into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from nas_table import OUTPUT, read_table
from raw_results import RESULTS, write_results

from kubetune.encoding import encode
from kubetune.samplers import make_pruner, make_sampler
from kubetune.space import sample
from kubetune.spec import parse_experiment

STRATEGIES = ["random", "tpe", "gp", "cmaes", "evolution", "rl", "tpe+hyperband", "random+hyperband"]
# A run goes on past its largest trial budget until it has spent this many trainings' worth of seconds,
# capped at this many times the trial budget, so pruned strategies are compared at equal seconds too.
MAX_TRIAL_FACTOR = 4


class Table:
    """The table's records by architecture code, with the best mean test accuracy to measure regret from."""

    def __init__(self, header: dict, records: list[dict]):
        self.header = header
        self.epochs = header["epochs"]
        self.runs: dict[str, list[dict]] = {}
        for row in records:
            if row["status"] == "complete" and len(row["val_accuracy"]) == self.epochs:
                self.runs.setdefault(row["code"], []).append(row)
        self.test = {code: statistics.mean(r["test_accuracy"] for r in rows) for code, rows in self.runs.items()}
        self.best_test = max(self.test.values())
        self.full_seconds = statistics.mean(sum(r["seconds"]) for rows in self.runs.values() for r in rows)

    def run(self, code: str, replay_seed: int) -> dict | None:
        """The training of ``code`` this replay seed sees, or None when the table lacks it."""
        rows = self.runs.get(code)
        return None if not rows else rows[replay_seed % len(rows)]


def load(path: Path) -> Table:
    header, records = read_table(path)
    if header is None or not records:
        raise SystemExit(f"--table {path} holds no header or no records; build it with benchmarks/nas_table.py")
    return Table(header, records)


def experiment(table: Table, strategy: str, *, seed: int, trials: int, history: int | None = None):
    """The experiment a replay searches: the table's space and epochs, ``strategy`` as sampler[+pruner];
    ``history`` is tpe's strategy.sampler.history (benchmarks/tpe_history.py)."""
    sampler, _, pruner = strategy.partition("+")
    settings = {"name": sampler, "seed": seed} | ({} if history is None else {"history": history})
    document = {
        "apiVersion": "kubetune/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "nas-replay"},
        "spec": {
            "data": table.header["data"],
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "architecture": table.header["space"],
            "strategy": {"sampler": settings, "pruner": {"name": pruner or "none"}},
            "budget": {"maxTrials": trials, "parallelTrials": 1, "trialsPerSegment": trials},
            "trial": {"epochs": table.epochs},
        },
    }
    return parse_experiment(document)


def replay(
    table: Table, strategy: str, *, seed: int, trials: int, seconds: float, history: int | None = None
) -> list[dict]:
    """One search; per trial, the simulated seconds and epochs spent so far and the incumbent's regret after it.

    A drawn architecture the table lacks (a partial table) ends as failed, at no cost.
    """
    exp = experiment(table, strategy, seed=seed, trials=trials, history=history)
    # Named, so Hyperband (which picks a trial's bracket from the study's name) replays the same each time.
    study = optuna.create_study(
        study_name=f"nas-replay-{seed}", direction="maximize", sampler=make_sampler(exp), pruner=make_pruner(exp)
    )
    curve: list[dict] = []
    spent, best_val, regret = 0.0, -1.0, None
    epochs = 0  # trained so far, for comparisons at equal epochs (benchmarks/pruner_replay.py)
    while len(curve) < trials or (spent < seconds and len(curve) < MAX_TRIAL_FACTOR * trials):
        trial = study.ask()
        _, architecture = sample(trial, exp.spec)
        assert architecture is not None  # the experiment's architecture space is the table's
        code = encode(architecture)
        run = table.run(code, seed)
        if run is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            curve.append({"seconds": round(spent, 3), "epochs": epochs, "regret": regret})
            continue
        pruned = False
        for epoch, value in enumerate(run["val_accuracy"], start=1):
            spent += run["seconds"][epoch - 1]
            epochs += 1
            trial.report(value, epoch)
            if epoch < table.epochs and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, run["val_accuracy"][-1])
            if run["val_accuracy"][-1] > best_val:
                best_val, regret = run["val_accuracy"][-1], round(table.best_test - table.test[code], 6)
        curve.append({"seconds": round(spent, 3), "epochs": epochs, "regret": regret})
    return curve


def _replay(table: Table, run: tuple[str, int], *, trials: int, seconds: float) -> list[dict]:
    strategy, seed = run
    return replay(table, strategy, seed=seed, trials=trials, seconds=seconds)


def regret_after_trials(curve: list[dict], trials: int) -> float | None:
    return curve[min(trials, len(curve)) - 1]["regret"]


def regret_after_seconds(curve: list[dict], seconds: float) -> float | None:
    within = [point["regret"] for point in curve if point["seconds"] <= seconds]
    return within[-1] if within else None


def summarise(curves: dict[str, list[list[dict]]], budgets: list[int], seconds: list[float]) -> dict:
    """Per strategy and budget, the regret's spread and, against random search, how often it does better."""
    axes: dict[str, dict[float, Callable[[list[dict]], float | None]]] = {
        "trials": {b: functools.partial(regret_after_trials, trials=b) for b in budgets},
        "seconds": {round(s, 1): functools.partial(regret_after_seconds, seconds=s) for s in seconds},
    }
    summary: dict = {strategy: {} for strategy in curves}
    for axis, points in axes.items():
        for budget, regret in points.items():
            values = {strategy: [regret(curve) for curve in runs] for strategy, runs in curves.items()}
            for strategy, found in values.items():
                stats = _stats(found)
                if "random" in values and strategy != "random":
                    stats["beats_random"] = _beats_random(found, values["random"])
                summary[strategy].setdefault(axis, {})[budget] = stats
    return summary


def _beats_random(values: list[float | None], random: list[float | None]) -> float | None:
    """The share of (strategy run, random run) pairs where the strategy's regret is lower, ties counting half.

    0.5 is no better than random search; with 20 seeds each, above about 0.66 is unlikely by chance (it is
    Mann-Whitney's U over the pairs, one-sided at 5%).
    """
    ours, theirs = [v for v in values if v is not None], [v for v in random if v is not None]
    if not ours or not theirs:
        return None
    wins = sum((a < b) + 0.5 * (a == b) for a in ours for b in theirs)
    return wins / (len(ours) * len(theirs))


def _stats(values: list[float | None]) -> dict:
    found = [v for v in values if v is not None]
    stats: dict = {"runs": len(values), "without_incumbent": len(values) - len(found)}
    if found:
        q25, median, q75 = (float(q) for q in np.percentile(found, [25, 50, 75]))
        stats |= {"mean": statistics.mean(found), "std": statistics.stdev(found) if len(found) > 1 else 0.0}
        stats |= {"q25": q25, "median": median, "q75": q75}
    return stats


def _print(summary: dict, axis: str, label: str) -> None:
    print(f"\nregret (best mean test accuracy minus the incumbent's) against {label}")
    print("beats: the share of (run, random search run) pairs where the run's regret is lower")
    keys = ("mean", "std", "q25", "median", "q75", "beats_random")
    print(f"{'strategy':18}{label:>10}" + "".join(f"{k.split('_')[0]:>9}" for k in keys) + f"{'no inc.':>9}")
    for strategy, by_axis in summary.items():
        for budget, stats in by_axis[axis].items():
            numbers = "".join(f"{stats[k]:9.4f}" if stats.get(k) is not None else f"{'-':>9}" for k in keys)
            print(f"{strategy:18}{budget:>10}{numbers}{stats['without_incumbent']:>9}")


def plot(summary: dict, path: Path, title: str) -> Path:
    """Mean regret with its quartiles, against trials and against simulated seconds, one line per strategy.

    ``summary`` is :func:`summarise`'s, best taken at every trial and on a fine grid of seconds.
    """
    figure = Figure(figsize=(12, 4.5))
    axes = figure.subplots(1, 2)
    for axis, (key, label) in zip(axes, (("trials", "trials"), ("seconds", "simulated training seconds")), strict=True):
        for strategy, by_axis in summary.items():
            points = [(float(b), s) for b, s in by_axis[key].items() if "mean" in s]
            if not points:
                continue
            x = [p[0] for p in points]
            axis.plot(x, [p[1]["mean"] for p in points], label=strategy)
            axis.fill_between(x, [p[1]["q25"] for p in points], [p[1]["q75"] for p in points], alpha=0.15)
        axis.set_xlabel(label)
        axis.set_ylabel("regret (test accuracy)")
        axis.set_xscale("log")
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    print(f"plot: {path}")
    return path


def replay_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options every replay script takes (budgets, seeds, jobs), or None."""
    if min(args.budgets) < 1 or args.seeds < 1 or args.jobs < 1:
        return f"--budgets, --seeds and --jobs must be positive but got {args.budgets}, {args.seeds}, {args.jobs}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=OUTPUT)
    parser.add_argument("--seeds", type=int, default=20, help="replay seeds 0 to N-1 per strategy")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 25, 50], help="trial budgets")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--jobs", type=int, default=1, help="replays run in parallel processes")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the raw JSON and the plot")
    args = parser.parse_args(argv)
    if problem := replay_options_problem(args):
        print(problem, file=sys.stderr)
        return 2
    table = load(args.table)
    budgets = sorted(set(args.budgets))
    seconds = [b * table.full_seconds for b in budgets]
    print(
        f"{args.table.name}: {len(table.runs)} architectures, {table.epochs} epochs, best mean test accuracy "
        f"{table.best_test:.4f}, a full training {table.full_seconds:.2f} s; {args.seeds} seeds per strategy"
    )
    runs = [(strategy, seed) for strategy in args.strategies for seed in range(args.seeds)]
    curves: dict[str, list[list[dict]]] = {strategy: [] for strategy in args.strategies}
    with ProcessPoolExecutor(args.jobs) as pool:
        done = pool.map(functools.partial(_replay, table, trials=budgets[-1], seconds=seconds[-1]), runs)
        try:
            for (strategy, _), curve in zip(runs, done, strict=True):
                curves[strategy].append(curve)
        except ImportError as error:  # Optuna's CMA-ES needs the cmaes package once a dimension is numeric
            advice = "Optuna's CmaEsSampler needs it: pip install cmaes, or leave cmaes out of --strategies"
            print(f"--strategies: {error}; {advice}", file=sys.stderr)
            return 2
    summary = summarise(curves, budgets, seconds)
    _print(summary, "trials", "trials")
    _print(summary, "seconds", "seconds")
    name = f"nas_strategies-{args.table.name.split('.')[0]}"
    raw = {
        "table": args.table.name,
        "table_header": table.header,
        "architectures": len(table.runs),
        "best_test_accuracy": table.best_test,
        "regret_of": "best mean test accuracy in the table minus the incumbent's (best final validation accuracy)",
        "seeds": args.seeds,
        "budgets": budgets,
        "summary": summary,
        "curves": curves,
    }
    write_results(name, raw, folder=args.results)
    grid = [float(s) for s in np.geomspace(table.full_seconds / 10, seconds[-1], 40)]
    plot(
        summarise(curves, list(range(1, budgets[-1] + 1)), grid),
        args.results / f"{name}.png",
        f"{args.table.name}: regret of the incumbent, {args.seeds} seeds",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
