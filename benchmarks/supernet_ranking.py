"""How well a weight-sharing supernet ranks the tabular benchmark's architectures, and what DARTS finds.

    python benchmarks/supernet_ranking.py [--table benchmarks/data/nas_table_mnist1d.jsonl.gz] [--seeds 3]
        [--epochs 20] [--darts-epochs 10] [--threads 1] [--jobs 1]

One-shot (kubetune.supernet): per seed, one supernet per (cells, width) of the table's space (a candidate
is ranked by the supernet of its own frame), each trained single-path for ``--epochs`` with the table's
hyperparameters on the table's data, then every architecture in the table scored by its validation
accuracy with the shared weights (batch norm recalibrated per candidate). Against the table's truth (the
mean over its training seeds of the test accuracy and of the final validation accuracy) it reports Kendall's
tau over all architectures and within each frame, and the regret (best test accuracy in the table minus the
pick's) of the supernet's top 1 and of its top 5 (the one of the five with the best true validation
accuracy, as a study that trains all five would keep it).

DARTS (kubetune.darts): first-order search for ``--darts-epochs`` on the largest frame; the derived cell's
true mean test accuracy is looked up in the table by its code. Its cost is the search's seconds plus
the table's seconds for training the derived cell; random search gets the same seconds, drawing
architectures of the table uniformly, each costing the table's seconds for the training its seed sees,
keeping the one with the best final validation accuracy (repeated ``RANDOM_REPEATS`` times per seed).
The one-shot ranking's cost (training, scoring, and the table's seconds for its top 5) gets the same comparison,
for the top 5 overall and for the top 5 that strategy.oneShot enqueues (round-robin over the frames' rankings,
kubetune.one_shot.interleave), each at its own seconds.
Both also face TPE at the same seconds: kubetune's TPE sampler replayed on the table (nas_strategies.replay,
``RANDOM_REPEATS`` replay seeds per seed), its incumbent's regret once those seconds are spent.

Seconds: the supernet's and DARTS' are the process's CPU seconds (one thread: its wall time on a quiet
core; this machine is shared, so wall time would charge them for other work, and both are in the raw JSON);
the table's are the wall seconds of its one-thread trainings on the same shared machine, so if anything
random search is charged more than the supernet is.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from nas_strategies import Table, load, regret_after_seconds, replay
from nas_table import OUTPUT
from raw_results import write_results
from scipy.stats import kendalltau

from kubetune.darts import search
from kubetune.data import load_split
from kubetune.encoding import decode, encode
from kubetune.one_shot import interleave
from kubetune.spec import CellSpace
from kubetune.supernet import Supernet, frames, train_one_shot

RANDOM_REPEATS = 20
TOP = 5


def true_val(table: Table, code: str) -> float:
    return statistics.mean(run["val_accuracy"][-1] for run in table.runs[code])


def table_seconds(table: Table, code: str) -> float:
    """A full training of ``code`` as the table timed it (its mean over seeds), or a mean training if absent."""
    runs = table.runs.get(code)
    return statistics.mean(sum(run["seconds"]) for run in runs) if runs else table.full_seconds


def one_shot(table: Table, space: CellSpace, split, *, epochs: int, seed: int) -> dict:
    """Train a supernet per frame and score every architecture of the table; seconds (CPU) include both."""
    scores: dict[str, float] = {}
    started, cpu = time.perf_counter(), time.process_time()
    train_seconds = {}
    for cells, width in frames(space):
        net = Supernet.for_split(space, split, cells=cells, width=width, seed=seed)
        begun = time.perf_counter()
        result = train_one_shot(net, split, epochs=epochs, hyperparameters=table.header["hyperparameters"], seed=seed)
        train_seconds[f"c{cells}w{width}"] = round(time.perf_counter() - begun, 2)
        assert result.status == "complete", result.reason
        for code in table.runs:
            architecture = decode(code)
            if (architecture["cells"], architecture["width"]) == (cells, width):
                scores[code] = net.evaluate(architecture, split)["accuracy"]
    seconds, wall = time.process_time() - cpu, time.perf_counter() - started
    return {"scores": scores, "seconds": seconds, "wall_seconds": wall, "train_seconds": train_seconds} | ranking(
        table, scores
    )


def ranking(table: Table, scores: dict[str, float]) -> dict:
    """Kendall's tau against the table's truth, overall and per frame, and the regret of the top picks."""
    codes = sorted(scores)
    supernet = [scores[c] for c in codes]
    tau_test = kendalltau(supernet, [table.test[c] for c in codes]).statistic
    tau_val = kendalltau(supernet, [true_val(table, c) for c in codes]).statistic
    per_frame = {}
    for frame in sorted({c.split(":")[2] + c.split(":")[3] for c in codes}):
        inside = [c for c in codes if c.split(":")[2] + c.split(":")[3] == frame]
        per_frame[frame] = kendalltau([scores[c] for c in inside], [table.test[c] for c in inside]).statistic
    ranked = sorted(codes, key=lambda c: -scores[c])
    top = ranked[:TOP]
    kept = max(top, key=lambda c: true_val(table, c))
    # What strategy.oneShot enqueues: round-robin over the frames' own rankings (kubetune.one_shot.interleave).
    frames_ranked = [
        [(scores[c], c) for c in ranked if c.split(":")[2] + c.split(":")[3] == frame] for frame in per_frame
    ]
    per_frame_top = [code for _, _, code in interleave(frames_ranked, TOP)]
    per_frame_kept = max(per_frame_top, key=lambda c: true_val(table, c))
    return {
        "tau_test": tau_test,
        "tau_val": tau_val,
        "tau_test_within_frame": per_frame,
        "top1": ranked[0],
        "top1_regret": table.best_test - table.test[ranked[0]],
        f"top{TOP}": top,
        f"top{TOP}_regret": table.best_test - table.test[kept],
        f"top{TOP}_seconds": sum(table_seconds(table, c) for c in top),
        f"top{TOP}_per_frame": per_frame_top,
        f"top{TOP}_per_frame_regret": table.best_test - table.test[per_frame_kept],
        f"top{TOP}_per_frame_seconds": sum(table_seconds(table, c) for c in per_frame_top),
    }


def random_search(table: Table, seconds: float, *, seed: int) -> dict:
    """Mean regret and trials of uniform random search within ``seconds`` of the table's training time."""
    regrets, trials = [], []
    codes = sorted(table.runs)
    for repeat in range(RANDOM_REPEATS):
        draw = random.Random(seed * 1000 + repeat)
        spent, best, count = 0.0, None, 0
        while True:
            code = draw.choice(codes)
            run = table.run(code, seed + repeat)
            assert run is not None
            spent += sum(run["seconds"])
            if spent > seconds:
                break
            count += 1
            if best is None or run["val_accuracy"][-1] > best[0]:
                best = (run["val_accuracy"][-1], code)
        trials.append(count)
        regrets.append(None if best is None else table.best_test - table.test[best[1]])
    found = [r for r in regrets if r is not None]
    return {
        "seconds": seconds,
        "mean_trials": statistics.mean(trials),
        "mean_regret": statistics.mean(found) if found else None,
        "without_incumbent": len(regrets) - len(found),
        "regrets": regrets,
    }


def tpe_search(table: Table, seconds: float, *, seed: int) -> dict:
    """Mean regret of kubetune's TPE replayed on the table once it has spent ``seconds`` of training."""
    trials = int(seconds / table.full_seconds) + 1  # the replay runs on while its seconds last
    regrets = [
        regret_after_seconds(replay(table, "tpe", seed=seed * 1000 + r, trials=trials, seconds=seconds), seconds)
        for r in range(RANDOM_REPEATS)
    ]
    found = [r for r in regrets if r is not None]
    return {
        "seconds": seconds,
        "mean_regret": statistics.mean(found) if found else None,
        "without_incumbent": len(regrets) - len(found),
        "regrets": regrets,
    }


def darts(table: Table, space: CellSpace, split, *, epochs: int, seed: int) -> dict:
    net = Supernet(space, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed)
    cpu = time.process_time()
    result = search(net, split, epochs=epochs, hyperparameters=table.header["hyperparameters"], seed=seed)
    code = encode(result.architecture)
    test = table.test.get(code)
    return {
        "code": code,
        "weights": result.weights,
        "search_seconds": time.process_time() - cpu,
        "search_wall_seconds": result.seconds,
        "seconds": time.process_time() - cpu + table_seconds(table, code),
        "test_accuracy": test,
        "regret": None if test is None else table.best_test - test,
        "in_table": test is not None,
    }


def measure(table: Table, args: argparse.Namespace, seed: int) -> dict:
    """One seed: the one-shot ranking, DARTS, and random search at the seconds each cost."""
    torch.set_num_threads(args.threads)
    space = CellSpace.model_validate(table.header["space"])
    split = load_split(table.header["data"])
    shot = one_shot(table, space, split, epochs=args.epochs, seed=seed)
    found = darts(table, space, split, epochs=args.darts_epochs, seed=seed)
    one_shot_seconds = shot["seconds"] + shot[f"top{TOP}_seconds"]
    round_robin_seconds = shot["seconds"] + shot[f"top{TOP}_per_frame_seconds"]
    return {
        "seed": seed,
        "one_shot": shot,
        "random_at_one_shot_seconds": random_search(table, one_shot_seconds, seed=seed),
        "tpe_at_one_shot_seconds": tpe_search(table, one_shot_seconds, seed=seed),
        "random_at_round_robin_seconds": random_search(table, round_robin_seconds, seed=seed),
        "tpe_at_round_robin_seconds": tpe_search(table, round_robin_seconds, seed=seed),
        "darts": found,
        "random_at_darts_seconds": random_search(table, found["seconds"], seed=seed),
        "tpe_at_darts_seconds": tpe_search(table, found["seconds"], seed=seed),
    }


def _mean(rows: list[dict], key: str) -> float | None:
    found = [row[key] for row in rows if row[key] is not None]
    return statistics.mean(found) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=OUTPUT)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="single-path epochs of each frame's supernet")
    parser.add_argument("--darts-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per seed")
    parser.add_argument("--jobs", type=int, default=1, help="seeds measured in parallel processes")
    args = parser.parse_args(argv)
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if isinstance(v, int) and v < 1]
    if bad:
        print(f"{', '.join(bad)}: must be a positive integer", file=sys.stderr)
        return 2
    table = load(args.table)
    print(
        f"{args.table.name}: {len(table.runs)} architectures, best mean test accuracy {table.best_test:.4f}, "
        f"a full training {table.full_seconds:.2f} s"
    )
    runs: list[dict] = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for run in pool.map(functools.partial(measure, table, args), range(args.seeds)):
            runs.append(run)
            _print(run)
            _write(table, args, runs)  # after every seed: a long run that is stopped keeps what it measured
    return 0


def _print(run: dict) -> None:
    shot, found = run["one_shot"], run["darts"]
    frames_tau = ", ".join(f"{k} {v:.2f}" for k, v in shot["tau_test_within_frame"].items())
    print(
        f"seed {run['seed']}: one-shot {shot['seconds']:.0f} s, tau test {shot['tau_test']:.3f} val "
        f"{shot['tau_val']:.3f} (within frames {frames_tau}),"
        f" regret top-1 {shot['top1_regret']:.4f} top-{TOP} {shot[f'top{TOP}_regret']:.4f},"
        f" random search at {run['random_at_one_shot_seconds']['seconds']:.0f} s "
        f"{_text(run['random_at_one_shot_seconds']['mean_regret'])}, TPE "
        f"{_text(run['tpe_at_one_shot_seconds']['mean_regret'])};"
        f" round-robin top-{TOP} over frames {shot[f'top{TOP}_per_frame_regret']:.4f},"
        f" random search at {run['random_at_round_robin_seconds']['seconds']:.0f} s "
        f"{_text(run['random_at_round_robin_seconds']['mean_regret'])}, TPE "
        f"{_text(run['tpe_at_round_robin_seconds']['mean_regret'])};"
        f" DARTS {found['code']} in {found['search_seconds']:.0f} s + training: regret {_text(found['regret'])},"
        f" random search at {found['seconds']:.0f} s {_text(run['random_at_darts_seconds']['mean_regret'])},"
        f" TPE {_text(run['tpe_at_darts_seconds']['mean_regret'])}",
        flush=True,
    )


def _write(table: Table, args: argparse.Namespace, runs: list[dict]) -> None:
    summary = {
        "seeds": len(runs),
        "tau_test": statistics.mean(r["one_shot"]["tau_test"] for r in runs),
        "tau_val": statistics.mean(r["one_shot"]["tau_val"] for r in runs),
        "top1_regret": statistics.mean(r["one_shot"]["top1_regret"] for r in runs),
        f"top{TOP}_regret": statistics.mean(r["one_shot"][f"top{TOP}_regret"] for r in runs),
        f"top{TOP}_per_frame_regret": statistics.mean(r["one_shot"][f"top{TOP}_per_frame_regret"] for r in runs),
        "random_at_one_shot_seconds_regret": _mean([r["random_at_one_shot_seconds"] for r in runs], "mean_regret"),
        "tpe_at_one_shot_seconds_regret": _mean([r["tpe_at_one_shot_seconds"] for r in runs], "mean_regret"),
        "random_at_round_robin_seconds_regret": _mean(
            [r["random_at_round_robin_seconds"] for r in runs], "mean_regret"
        ),
        "tpe_at_round_robin_seconds_regret": _mean([r["tpe_at_round_robin_seconds"] for r in runs], "mean_regret"),
        "darts_regret": _mean([r["darts"] for r in runs], "regret"),
        "random_at_darts_seconds_regret": _mean([r["random_at_darts_seconds"] for r in runs], "mean_regret"),
        "tpe_at_darts_seconds_regret": _mean([r["tpe_at_darts_seconds"] for r in runs], "mean_regret"),
    }
    print("mean over seeds so far: " + ", ".join(f"{k} {_text(v)}" for k, v in summary.items()), flush=True)
    raw = {
        "table": args.table.name,
        "table_header": table.header,
        "architectures": len(table.runs),
        "best_test_accuracy": table.best_test,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "regret_of": "best mean test accuracy in the table minus the pick's mean test accuracy",
        "summary": summary,
        "runs": runs,
    }
    write_results("supernet_ranking", raw)


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
