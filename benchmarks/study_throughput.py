"""Study throughput: ask+tell per second with 1-8 concurrent lanes on PostgreSQL, SQLite and a journal file.

    python benchmarks/study_throughput.py [--trials 1000] [--lanes 1 2 4 8] [--backends postgresql sqlite journal]
                                          [--latency-trials 5000] [--latency-samples 300] [--spec examples/digits.yaml]

Each lane is its own process (as each pipeline step is its own pod): it opens the storage the way
kubetune does (``kubetune.storage.open_storage`` for the databases), loads the study with kubetune's
sampler (``make_sampler``: constant-liar multivariate TPE) and a lane seed, and repeats
ask -> sample the spec's whole search space (hyperparameters and architecture) -> tell a synthetic
objective, until the lanes together have told ``--trials`` trials. No training: this measures the
study, which is the shared part every lane waits on.

Prints one table of trials/s (wall clock, all lanes together) and the ask+tell latency (p50/p99
per call, in the lanes), then ask+tell latency with ``--latency-trials`` trials already in a
PostgreSQL study (a long-lived lane), with the same calls on an in-memory study beside it to show
how much of it the sampler costs and how much the database, and what one suggest step costs in a
process of its own (how kubetune's pipeline runs it: it reads the whole study first). PostgreSQL runs durably (fsync on) in a throwaway cluster
(kubetune.devstack.Postgres); ``--fast-postgres`` turns fsync off as the tests do.

Targets (issue 3): >= 30 trials/s with 2 lanes on PostgreSQL; p99 < 250 ms at 5,000 trials.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from raw_results import write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPAWN = multiprocessing.get_context("spawn")


def objective(chosen: dict, architecture: dict | None) -> float:
    """A smooth synthetic objective of the sampled point, so TPE has something to model."""
    lr = float(chosen.get("lr", 1e-3))
    score = -abs(math.log10(lr) + 2.5)
    if architecture:
        blocks = architecture["blocks"]
        score += 0.1 * len(blocks) + 0.05 * sum(b.get("kind") == "conv" for b in blocks)
        score -= 0.2 * sum(float(b.get("dropout", 0.0)) for b in blocks)
    return score


def timed_ask_tell(study, spec, calls: int) -> list[float]:
    """Seconds of each of ``calls`` rounds of ask -> sample the whole space -> tell."""
    from kubetune import space

    latencies = []
    for _ in range(calls):
        tick = time.perf_counter()
        trial = study.ask()
        chosen, architecture = space.sample(trial, spec)
        study.tell(trial, objective(chosen, architecture))
        latencies.append(time.perf_counter() - tick)
    return latencies


def percentiles_ms(latencies) -> dict:
    return {"p50_ms": 1e3 * np.percentile(latencies, 50), "p99_ms": 1e3 * np.percentile(latencies, 99)}


def open_any(kind: str, url: str, experiment):
    """The storage a lane uses: kubetune's RDB storage, or an Optuna journal file."""
    if kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url))
    from kubetune.storage import open_storage

    return open_storage(experiment, url)


def lane(kind: str, url: str, spec_path: str, study_name: str, slot: int, quota: int, start, results) -> None:
    import optuna

    from kubetune.samplers import make_sampler
    from kubetune.spec import load_experiment

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    experiment = load_experiment(spec_path)
    study = optuna.load_study(
        study_name=study_name,
        storage=open_any(kind, url, experiment),
        sampler=make_sampler(experiment, seed_offset=slot),
    )
    study.get_trials(deepcopy=False)  # warm the connection and the cache before the clock starts
    start.wait()
    began = time.perf_counter()
    latencies = timed_ask_tell(study, experiment.spec, quota)
    results.put((slot, began, time.perf_counter(), latencies))


def new_backend(kind: str, folder: Path, postgres, index: int) -> str:
    if kind == "postgresql":
        return postgres.create_database(f"bench_{index}")
    if kind == "sqlite":
        return f"sqlite:///{folder / f'bench-{index}.db'}"
    return str(folder / f"bench-{index}.journal")


def create(kind: str, url: str, spec_path: str, name: str):
    import optuna

    from kubetune.spec import load_experiment

    experiment = load_experiment(spec_path)
    return optuna.create_study(study_name=name, storage=open_any(kind, url, experiment), direction="maximize")


def measure(kind: str, url: str, spec_path: str, lanes: int, trials: int) -> dict:
    name = f"throughput-{kind}-{lanes}"
    create(kind, url, spec_path, name)
    start, results = SPAWN.Event(), SPAWN.Queue()
    quotas = [trials // lanes + (1 if i < trials % lanes else 0) for i in range(lanes)]
    processes = [
        SPAWN.Process(target=lane, args=(kind, url, spec_path, name, i, quotas[i], start, results))
        for i in range(lanes)
    ]
    for process in processes:
        process.start()
    time.sleep(1.0 + 0.5 * lanes)  # let every lane import and connect
    start.set()
    done = [results.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    wall = max(end for _, _, end, _ in done) - min(began for _, began, _, _ in done)
    latencies = np.concatenate([np.asarray(lat) for *_, lat in done])
    return {
        "trials_per_s": trials / wall,
        **percentiles_ms(latencies),
        "wall_s": wall,
        "latencies_s": latencies.tolist(),
    }


def cold_suggest(url: str, spec_path: str, results) -> None:
    """What a suggest step does in its own process: open the study, read it, ask once, record the trial."""
    began = time.perf_counter()
    import optuna

    from kubetune import space
    from kubetune.samplers import make_sampler
    from kubetune.spec import load_experiment
    from kubetune.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    imported = time.perf_counter()
    experiment = load_experiment(spec_path)
    study = optuna.load_study(
        study_name="latency", storage=open_storage(experiment, url), sampler=make_sampler(experiment, seed_offset=99)
    )
    study.get_trials(deepcopy=False)
    loaded = time.perf_counter()
    trial = study.ask()
    chosen, architecture = space.sample(trial, experiment.spec)
    trial.set_user_attr("architecture", architecture)
    study.tell(trial, objective(chosen, architecture))
    results.put((imported - began, loaded - imported, time.perf_counter() - loaded))


def latency_at(size: int, samples: int, url: str, spec_path: str) -> dict:
    """ask+tell latency with ``size`` finished trials already in the study: PostgreSQL and in memory."""
    import optuna

    from kubetune import space
    from kubetune.samplers import make_sampler
    from kubetune.spec import load_experiment

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    experiment = load_experiment(spec_path)
    history = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(size):
        trial = history.ask()
        chosen, architecture = space.sample(trial, experiment.spec)
        history.tell(trial, objective(chosen, architecture))
    finished = history.get_trials(deepcopy=False)
    filled = time.perf_counter()
    create("postgresql", url, spec_path, "latency").add_trials(finished)
    fill_seconds = time.perf_counter() - filled
    out = {"fill_s": fill_seconds}
    memory = optuna.create_study(direction="maximize", sampler=make_sampler(experiment))
    memory.add_trials(finished)
    database = optuna.load_study(
        study_name="latency", storage=open_any("postgresql", url, experiment), sampler=make_sampler(experiment)
    )
    for label, study in (("postgresql", database), ("in-memory", memory)):
        study.get_trials(deepcopy=False)
        latencies = timed_ask_tell(study, experiment.spec, samples)
        out[label] = {**percentiles_ms(latencies), "mean_ms": 1e3 * np.mean(latencies), "latencies_s": latencies}
    results = SPAWN.Queue()
    cold = []
    for _ in range(3):
        process = SPAWN.Process(target=cold_suggest, args=(url, spec_path, results))
        process.start()
        process.join()
        assert process.exitcode == 0, "the suggest step's process failed"
        cold.append(results.get(timeout=10))
    out["cold"] = np.median(np.asarray(cold), axis=0).tolist()
    out["cold_runs"] = [list(run) for run in cold]
    return out


def same_suggestions_as_optuna(spec_path: str, trials: int = 200) -> bool:
    """kubetune's TPE (one read per ask, cached observations) suggests exactly what Optuna's TPESampler does."""
    import optuna

    from kubetune import space
    from kubetune.samplers import make_sampler
    from kubetune.spec import load_experiment

    experiment = load_experiment(spec_path)
    ours = make_sampler(experiment, seed_offset=7)
    seed = (experiment.spec.strategy.sampler.seed + 7) % 2**32  # as make_sampler seeds a lane
    theirs = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=ours._n_startup_trials, multivariate=True, group=True, constant_liar=True
    )

    def suggestions(sampler) -> list[dict]:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        for _ in range(trials):
            trial = study.ask()
            chosen, architecture = space.sample(trial, experiment.spec)
            study.tell(trial, objective(chosen, architecture))
        return [t.params for t in study.trials]

    return suggestions(ours) == suggestions(theirs)


BACKENDS = ("postgresql", "sqlite", "journal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--latency-trials", type=int, default=5000, help="0 skips the latency measurement")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--spec", default="examples/digits.yaml", help="whose search space the lanes sample")
    parser.add_argument("--fast-postgres", action="store_true", help="fsync off, as in the tests")
    args = parser.parse_args()

    import optuna

    from kubetune import devstack

    print(
        f"optuna {optuna.__version__}, {os.cpu_count()} CPUs, search space of {args.spec}, "
        f"{args.trials} trials per cell, PostgreSQL {'without' if args.fast_postgres else 'with'} fsync",
        flush=True,
    )
    same = same_suggestions_as_optuna(args.spec)
    print(f"kubetune's TPE suggests what Optuna's TPESampler suggests: {same}", flush=True)
    raw: dict = {"settings": vars(args), "optuna": optuna.__version__, "same_suggestions_as_optuna": same}
    folder = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    postgres = None
    try:
        if "postgresql" in args.backends or args.latency_trials:
            workdir = devstack.make_workdir("kubetune-bench-pg-")
            postgres = devstack.Postgres(workdir / "pg", fast=args.fast_postgres).start()
        rows, index = [], 0
        print(f"\n{'backend':<11} {'lanes':>5} {'trials/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'wall s':>7}", flush=True)
        for kind in args.backends:
            for lanes in args.lanes:
                index += 1
                result = measure(kind, new_backend(kind, folder, postgres, index), args.spec, lanes, args.trials)
                rows.append((kind, lanes, result))
                print(
                    f"{kind:<11} {lanes:>5} {result['trials_per_s']:>9.1f} {result['p50_ms']:>8.1f} "
                    f"{result['p99_ms']:>8.1f} {result['wall_s']:>7.1f}",
                    flush=True,
                )
        raw["throughput"] = [{"backend": kind, "lanes": lanes, **result} for kind, lanes, result in rows]
        if args.latency_trials:
            latency = latency_at(
                args.latency_trials, args.latency_samples, postgres.create_database("latency"), args.spec
            )
            print(
                f"\nask+tell with {args.latency_trials} trials in the study ({args.latency_samples} calls, "
                f"filled in {latency['fill_s']:.0f} s):"
            )
            for label in ("postgresql", "in-memory"):
                r = latency[label]
                print(
                    f"  {label:<11} p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   mean {r['mean_ms']:7.1f} ms"
                )
            raw["latency"] = latency
            imports, read, ask = latency["cold"]
            print(
                f"  a suggest step's own process (median of 3): imports {imports:.2f} s, open and read the study "
                f"{read:.2f} s, ask+sample+tell {ask:.2f} s"
            )
        for kind, lanes, result in rows:
            if kind == "postgresql" and lanes == 2:
                verdict = "meets" if result["trials_per_s"] >= 30 else "misses"
                print(f"\ntarget >= 30 trials/s with 2 lanes on PostgreSQL: {result['trials_per_s']:.1f} ({verdict})")
        if args.latency_trials:
            p99 = latency["postgresql"]["p99_ms"]
            print(
                f"target p99 < 250 ms at {args.latency_trials} trials: {p99:.0f} ms "
                f"({'meets' if p99 < 250 else 'misses'})"
            )
        every_backend = tuple(args.backends) == BACKENDS
        write_results("study_throughput" + ("" if every_backend else "-" + "-".join(args.backends)), raw)
    finally:
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.directory.parent, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
