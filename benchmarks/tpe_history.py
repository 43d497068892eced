"""TPE with a bounded history (strategy.sampler.history): the search quality it costs, the sampling time it saves.

    python benchmarks/tpe_history.py [--table benchmarks/data/nas_table_mnist1d.jsonl.gz] [--seeds 20]
        [--budgets 100 200 400] [--histories 50 100 200] [--jobs 2] [--sizes 1000 10000 100000]
        [--asks 20] [--window 1000] [--cell-seconds 120] [--spec examples/digits.yaml] [--parts quality cost]

Quality: nas_strategies.py's replay on the tabular MNIST-1D NAS benchmark (kubetune's own sampler on the
table's space, regret = best mean test accuracy in the table minus the incumbent's), for tpe without a
history, tpe with each of ``--histories`` and random search as the baseline, ``--seeds`` seeds each. Prints
the regret's mean, standard deviation and quartiles after each trial budget, and the share of (run,
unbounded tpe run) pairs where the run's regret is lower (0.5: no different from unbounded tpe).

Cost: per ``--sizes``, an in-memory study filled with that many finished trials of the spec's space
(study_scale.py's template trials, cycled), then ``--asks`` asks, each with kubetune.space.sample, timed
with no storage I/O, for tpe without a history and with ``--window``. Each asked trial is then told failed
(untimed), so every ask models the same study. The first ask of a process is reported apart: it reads every
trial into the group decomposition and the observation cache. A cell stops after ``--cell-seconds`` once it
has 3 asks, and says how many it timed. Writes every sample as raw JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
from nas_strategies import _beats_random, _stats, load, regret_after_trials, replay, replay_options_problem
from nas_table import OUTPUT
from raw_results import RESULTS, write_results
from study_scale import scale_experiment, template_trials
from study_throughput import percentiles_ms

from kubetune import space
from kubetune.samplers import make_sampler
from kubetune.spec import parse_experiment

REPO = Path(__file__).resolve().parents[1]
MIN_ASKS = 3  # a cell past --cell-seconds still times this many


def label(history: int | None) -> str:
    """A strategy's name in the tables: tpe, tpe/h50 for history 50."""
    return "tpe" if history is None else f"tpe/h{history}"


def _replay(table, run: tuple[str, int | None, int], *, trials: int) -> list[dict]:
    sampler, history, seed = run
    return replay(table, sampler, seed=seed, trials=trials, seconds=0.0, history=history)


def quality_summary(curves: dict[str, list[list[dict]]], budgets: list[int]) -> dict:
    """Per strategy and trial budget, the regret's spread and the share of pairs it beats unbounded tpe in."""
    summary: dict = {}
    for name, runs in curves.items():
        for budget in budgets:
            found = [regret_after_trials(curve, budget) for curve in runs]
            stats = _stats(found)
            if name != "tpe":
                stats["beats_tpe"] = _beats_random(found, [regret_after_trials(c, budget) for c in curves["tpe"]])
            summary.setdefault(name, {})[budget] = stats
    return summary


def quality(args: argparse.Namespace) -> dict:
    table = load(args.table)
    budgets = sorted(set(args.budgets))
    print(
        f"{args.table.name}: {len(table.runs)} architectures, best mean test accuracy {table.best_test:.4f}; "
        f"{args.seeds} seeds per strategy, {budgets[-1]} trials each"
    )
    strategies = [("random", None), ("tpe", None)] + [("tpe", h) for h in sorted(set(args.histories))]
    names = ["random" if s == "random" else label(h) for s, h in strategies]
    runs = [(s, h, seed) for s, h in strategies for seed in range(args.seeds)]
    curves: dict[str, list[list[dict]]] = {name: [] for name in names}
    with ProcessPoolExecutor(args.jobs) as pool:
        done = pool.map(functools.partial(_replay, table, trials=budgets[-1]), runs)
        for name, curve in zip(itertools.chain.from_iterable([n] * args.seeds for n in names), done, strict=True):
            curves[name].append(curve)
    summary = quality_summary(curves, budgets)
    print("\nregret (best mean test accuracy minus the incumbent's) after each trial budget")
    print("beats tpe: the share of (run, unbounded tpe run) pairs where the run's regret is lower; 0.5 is a tie")
    keys = ("mean", "std", "q25", "median", "q75", "beats_tpe")
    print(f"{'strategy':12}{'trials':>8}" + "".join(f"{k.replace('_', ' '):>11}" for k in keys))
    for name, by_budget in summary.items():
        for budget, stats in by_budget.items():
            numbers = "".join(f"{stats[k]:11.4f}" if stats.get(k) is not None else f"{'-':>11}" for k in keys)
            print(f"{name:12}{budget:>8}{numbers}")
    regret_of = "best mean test accuracy in the table minus the incumbent's (best final validation accuracy)"
    return {"table": args.table.name, "regret_of": regret_of, "seeds": args.seeds, "budgets": budgets} | {
        "summary": summary,
        "regrets": {n: [[p["regret"] for p in c] for c in runs] for n, runs in curves.items()},
    }


def timed_asks(experiment, history: int | None, templates: list, size: int, asks: int, limit: float) -> dict:
    """Seconds per ask + sample on a study of ``size`` finished trials, the first ask apart."""
    document = experiment.to_dict()
    document["spec"]["strategy"]["sampler"] = {"name": "tpe", "seed": 0, "history": history}
    exp = parse_experiment(document)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(exp))
    study.add_trials(list(itertools.islice(itertools.cycle(templates), size)))
    seconds: list[float] = []
    began = time.perf_counter()
    while len(seconds) < asks + 1 and (len(seconds) < MIN_ASKS + 1 or time.perf_counter() - began < limit):
        start = time.perf_counter()
        trial = study.ask()
        space.sample(trial, exp.spec)
        seconds.append(time.perf_counter() - start)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return {"first_s": seconds[0], "asks": len(seconds) - 1, "seconds": seconds[1:]} | percentiles_ms(seconds[1:])


def cost(args: argparse.Namespace) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment = scale_experiment(str(args.spec), "tpe-history")
    templates = template_trials(experiment)
    rows = []
    print(f"\nask + sample, in memory, {args.spec}; history None models every trial")
    print(f"{'trials':>8}{'history':>9}{'first ask s':>13}{'asks':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for size in sorted(set(args.sizes)):
        for history in (None, args.window):
            row = {"size": size, "history": history}
            row |= timed_asks(experiment, history, templates, size, args.asks, args.cell_seconds)
            rows.append(row)
            print(
                f"{size:>8}{history or '-':>9}{row['first_s']:>13.2f}{row['asks']:>6}"
                f"{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=OUTPUT)
    parser.add_argument("--seeds", type=int, default=20, help="replay seeds 0 to N-1 per strategy")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 400], help="trial budgets")
    parser.add_argument("--histories", type=int, nargs="+", default=[50, 100, 200], help="tpe histories replayed")
    parser.add_argument("--jobs", type=int, default=2, help="replays run in parallel processes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="finished trials")
    parser.add_argument("--asks", type=int, default=20, help="timed asks per size and history")
    parser.add_argument("--window", type=int, default=1_000, help="the history the cost part compares with none")
    parser.add_argument("--cell-seconds", type=float, default=120.0, help="stop a cell's asks after this long")
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "digits.yaml")
    parser.add_argument("--parts", nargs="+", default=["quality", "cost"], choices=["quality", "cost"])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the raw JSON")
    args = parser.parse_args(argv)
    if problem := replay_options_problem(args):
        print(problem, file=sys.stderr)
        return 2
    raw: dict = {}
    if "quality" in args.parts:
        raw["quality"] = quality(args)
    if "cost" in args.parts:
        raw["cost"] = cost(args)
    write_results("tpe_history", raw, folder=args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
