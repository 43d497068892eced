"""Study scale: a fresh process's suggest step at 1k-100k trials, and 1-64 concurrent lanes, direct and via gRPC.

    python benchmarks/study_scale.py [--sizes 1000 10000 100000] [--repeats 10] [--lanes 1 4 16 64]
                                     [--lane-trials 8] [--train-seconds 0.2] [--targets direct proxy service]
                                     [--cache DIR] [--max-connections N] [--fast-postgres] [--spec examples/digits.yaml]
                                     [--history N]

Every trial pod of a cluster search opens the study afresh, so what matters at scale is a cold
process: per study size it starts ``--repeats`` fresh processes that each do what kubetune's suggest
step does (``kubetune.search.suggest_trial``: open the study with kubetune's sampler, read it, check
the stop rules, ask, sample the spec's space, record the trial's attributes) and then tell the trial
(``kubetune.study.tell_once``), timing each phase. Three ways (``--targets``): ``direct`` to PostgreSQL
through ``kubetune.storage.open_storage``; ``proxy``, through Optuna's gRPC storage proxy
(``optuna.storages.run_grpc_proxy_server`` in a process of its own, which keeps the study in memory;
clients use ``GrpcStorageProxy``); and ``service``, kubetune's own suggest step
(``kubetune.search.suggest_trial``) asking the suggest service of ``python -m kubetune.storage_proxy``,
which asks in its warm process (kubetune.suggest_service), then telling through that proxy. Both
proxies need grpcio, which kubetune declares. The direct and proxy steps check and time the stop rules
without obeying them; the spec's budget is set to 1,000,000 trials so that no rule holds.
``--history N`` sets the spec's ``strategy.sampler.history`` (TPE's window of recent and best trials).

Studies are filled directly, not by running trials: finished template trials that look like what
kubetune records for the spec (parameters, architecture, per-epoch values, user attributes), written
in bulk as the rows ``create_new_trial(template_trial=...)`` would write (see :func:`bulk_insert`).
``--cache DIR`` keeps the PostgreSQL cluster and its filled studies in DIR between runs.

Then ``--lanes``: that many long-lived lane processes against one fresh study (ask -> sample -> sleep
``--train-seconds`` as training -> tell, ``--lane-trials`` each), reporting trials/s and the per-call
suggest and tell latency, and checking that no trial was lost, duplicated or told twice.

Target (issue 14): suggest at 100,000 trials within 2x of suggest at 1,000, and under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import random
import shutil
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml
from raw_results import write_results
from study_throughput import objective, percentiles_ms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPAWN = multiprocessing.get_context("spawn")
TEMPLATES = 200  # distinct finished trials the fill cycles through
PHASES = ("imports", "open", "read", "stop_check", "ask", "sample", "tell")
SUGGEST = ("open", "read", "stop_check", "ask", "sample")  # the suggest step, imports aside
TARGETS = ["direct", "proxy", "service"]  # where the steps reach the study: see reach()
SERVICE_PHASES = ("imports", "suggest", "tell")  # the suggest step asks the proxy's suggest service for it all


def scale_experiment(spec_path: str, name: str):
    """The spec's experiment under another study name, with a budget that never stops the benchmark."""
    from kubetune.spec import parse_experiment

    document = yaml.safe_load(Path(spec_path).read_text())
    document["metadata"]["name"] = name
    budget = document["spec"]["budget"]
    budget["maxTrials"] = 1_000_000
    budget.pop("maxDuration", None)
    return parse_experiment(document)


def with_history(spec_path: str, history: int, folder: Path) -> str:
    """A copy of the spec in ``folder`` whose TPE models a window of ``history`` trials; its path."""
    document = yaml.safe_load(Path(spec_path).read_text())
    document["spec"]["strategy"]["sampler"]["history"] = history
    path = folder / f"{Path(spec_path).stem}-history-{history}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def template_trials(experiment, count: int = TEMPLATES, seed: int = 0) -> list:
    """Finished trials as kubetune records them: sampled parameters, attributes, a value per epoch."""
    import optuna

    from kubetune import encoding, space

    rng = random.Random(seed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    epochs = experiment.spec.trial.epochs
    metric = experiment.spec.objectives[0].metric
    for number in range(count):
        trial = study.ask()
        chosen, architecture = space.sample(trial, experiment.spec)
        trial.set_user_attr("hyperparameters", space.trainer_hyperparameters(experiment.spec, chosen))
        trial.set_user_attr("architecture", architecture)
        if architecture is not None:
            trial.set_user_attr("architecture_code", encoding.encode(architecture))
        trial.set_user_attr("segment", number // 10)
        trial.set_user_attr("run", f"{experiment.name}-seg-{number // 10}")
        trial.set_user_attr("slot", number % 2)
        final = min(0.999, max(0.1, 0.9 + 0.05 * objective(chosen, architecture) + rng.gauss(0, 0.01)))
        curve = [final * (1 - 0.5 ** (epoch + 1)) for epoch in range(epochs)]
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        trial.set_user_attr(
            "fidelity",
            {"kind": "epochs", "levels": [{"step": e, "epochs": e, metric: v} for e, v in enumerate(curve, 1)]},
        )
        trial.set_user_attr("metrics", {metric: final, "test_accuracy": final - 0.01})
        trial.set_user_attr("mlflow_run_id", f"{rng.getrandbits(128):032x}")
        study.tell(trial, final)
    return study.get_trials(deepcopy=True)


def _child_rows(template, trial_id: int) -> dict[str, list[dict]]:
    """One template trial's rows in Optuna's tables, for the trial ``trial_id``."""
    import json

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models  # Optuna internal: the tables create_new_trial writes

    value_of = models.TrialValueModel.value_to_stored_repr
    step_of = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
    return {
        "trial_params": [
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": template.distributions[name].to_internal_repr(value),
                "distribution_json": distribution_to_json(template.distributions[name]),
            }
            for name, value in template.params.items()
        ],
        "trial_values": [
            {"trial_id": trial_id, "objective": i, "value": v, "value_type": t}
            for i, (v, t) in enumerate(value_of(value) for value in template.values)
        ],
        "trial_intermediate_values": [
            {"trial_id": trial_id, "step": step, "intermediate_value": v, "intermediate_value_type": t}
            for step, (v, t) in ((step, step_of(value)) for step, value in template.intermediate_values.items())
        ],
        "trial_user_attributes": [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in template.user_attrs.items()
        ],
        "trial_system_attributes": [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in template.system_attrs.items()
        ],
    }


def bulk_insert(url: str, study_id: int, templates: list, first: int, count: int, batch: int = 1000) -> None:
    """Add ``count`` finished trials numbered from ``first``, cycling through ``templates``, ``batch`` per transaction.

    The rows are the ones Optuna's ``create_new_trial(template_trial=...)`` writes, inserted in bulk:
    create_new_trial locks the study row and inserts row by row, which filled about 6 trials/s here
    (2 shared cores, fsync on) and would take hours for 100,000. Only for a study nothing else writes to.
    """
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine, insert

    engine = create_engine(url)
    tables = models.BaseModel.metadata.tables
    trials = tables["trials"]
    try:
        for offset in range(0, count, batch):
            numbers = range(first + offset, first + min(count, offset + batch))
            chosen = [templates[n % len(templates)] for n in numbers]
            rows = [
                {
                    "number": n,
                    "study_id": study_id,
                    "state": t.state,
                    "datetime_start": t.datetime_start,
                    "datetime_complete": t.datetime_complete,
                }
                for n, t in zip(numbers, chosen, strict=True)
            ]
            with engine.begin() as connection:
                ids = connection.execute(
                    insert(trials).returning(trials.c.trial_id, sort_by_parameter_order=True), rows
                ).scalars()
                children: dict[str, list[dict]] = {}
                for trial_id, template in zip(ids, chosen, strict=True):
                    for table, table_rows in _child_rows(template, trial_id).items():
                        children.setdefault(table, []).extend(table_rows)
                for table, table_rows in children.items():
                    if table_rows:
                        connection.execute(insert(tables[table]), table_rows)
    finally:
        engine.dispose()


def count_trials(url: str, study_id: int) -> int:
    """The study's number of trials, counted by the database (Optuna's get_n_trials reads every trial)."""
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine, func, select

    trials = models.TrialModel.__table__
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).where(trials.c.study_id == study_id)).scalar_one()
    finally:
        engine.dispose()


def filled_study(url: str, experiment, size: int) -> dict:
    """Create the study (as ensure-study does) and add finished trials up to ``size``; reused if already there."""
    from optuna.trial import TrialState

    from kubetune.storage import open_storage
    from kubetune.study import ensure_study

    study = ensure_study(experiment, storage=open_storage(experiment, url))
    # A step of an interrupted run left its trial running, and ensure_study turns a stale one into a waiting
    # retry; an ask would take that retry's parameters instead of sampling, and so time no sampling at all.
    leftovers = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in leftovers:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    have = count_trials(url, study._study_id)
    began = time.perf_counter()
    if size > have:
        bulk_insert(url, study._study_id, template_trials(experiment), have, size - have)
    fill_s = time.perf_counter() - began
    total = count_trials(url, study._study_id)
    assert total >= size, f"the study holds {total} trials, not {size}"
    return {"trials": total, "added": max(size - have, 0), "fill_s": fill_s, "leftovers_failed": len(leftovers)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_proxy(url: str, port: int, kubetune: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    if kubetune:
        from kubetune.storage_proxy import serve

        serve(url, "127.0.0.1", port)
    else:
        optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(url), host="127.0.0.1", port=port)


@contextlib.contextmanager
def grpc_proxy(url: str, *, kubetune: bool = False) -> Iterator[int]:
    """Optuna's gRPC storage proxy in front of ``url``, in a process of its own; yields its port.

    ``kubetune``: kubetune's (``python -m kubetune.storage_proxy``), with its suggest service on the next port.
    """
    from optuna.storages import GrpcStorageProxy

    port = free_port()
    server = SPAWN.Process(target=_serve_proxy, args=(url, port, kubetune), daemon=True)
    server.start()
    try:
        GrpcStorageProxy(host="127.0.0.1", port=port).wait_server_ready(timeout=120)
        yield port
    finally:
        server.terminate()
        server.join(10)


def warm_up(spec_path: str, target: str, name: str) -> float:
    """Seconds for a first reader to read the whole study: through a proxy, this loads the proxy's cache.

    A proxy in a cluster is long-lived, so the cold steps are timed after it; this is what its start costs.
    Through kubetune's suggest service the first reader is a suggest step (whose trial is told), which also
    warms the service's study and sampler.
    """
    import optuna

    began = time.perf_counter()
    if target.startswith("service:"):
        results = SPAWN.Queue()
        process = SPAWN.Process(target=service_suggest_and_tell, args=(spec_path, name, target, 999, results))
        process.start()
        process.join()
        assert process.exitcode == 0 and results.get(timeout=60)["told"], "the warm-up suggest step failed"
    else:
        optuna.load_study(study_name=name, storage=open_target(None, target)).get_trials(deepcopy=False)
    return time.perf_counter() - began


def open_target(experiment, target: str):
    """The storage a step opens: kubetune's RDB storage (``direct``) or a proxy client (a ``grpc:PORT``)."""
    if target.startswith("grpc:"):
        from optuna.storages import GrpcStorageProxy

        return GrpcStorageProxy(host="127.0.0.1", port=int(target.split(":", 1)[1]))
    from kubetune.storage import open_storage

    return open_storage(experiment, target)


def suggest_and_tell(spec_path: str, name: str, target: str, slot: int, results) -> None:
    """A suggest step in a fresh process, then a tell of its trial: seconds per phase (see PHASES)."""
    began = time.perf_counter()
    import optuna

    from kubetune import encoding, space
    from kubetune.stop_rules import stop_before_trial
    from kubetune.study import load_study, tell_once

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    marks = [began, time.perf_counter()]
    experiment = scale_experiment(spec_path, name)
    study = load_study(experiment, storage=open_target(experiment, target), seed_offset=slot)
    marks.append(time.perf_counter())
    study.get_trials(deepcopy=False)
    marks.append(time.perf_counter())
    stop_before_trial(study, experiment)  # timed, not obeyed: see the module's docstring
    marks.append(time.perf_counter())
    trial = study.ask()
    marks.append(time.perf_counter())
    chosen, architecture = space.sample(trial, experiment.spec)
    trial.set_user_attr("hyperparameters", space.trainer_hyperparameters(experiment.spec, chosen))
    trial.set_user_attr("architecture", architecture)
    if architecture is not None:
        trial.set_user_attr("architecture_code", encoding.encode(architecture))
    for key, value in (("segment", 0), ("run", f"{name}-bench"), ("slot", slot)):
        trial.set_user_attr(key, value)
    marks.append(time.perf_counter())
    told = tell_once(study, trial.number, state=optuna.trial.TrialState.COMPLETE, values=[0.5])
    marks.append(time.perf_counter())
    durations = [b - a for a, b in itertools.pairwise(marks)]
    results.put({"told": told, **dict(zip(PHASES, durations, strict=True))})


def service_suggest_and_tell(spec_path: str, name: str, target: str, slot: int, results) -> None:
    """kubetune's suggest step through its proxy's suggest service (``service:PORT``), then a tell through the proxy."""
    began = time.perf_counter()
    import optuna

    from kubetune.search import suggest_trial
    from kubetune.study import load_study, tell_once

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    os.environ["KUBETUNE_STORAGE_PROXY"] = f"grpc://127.0.0.1:{target.split(':', 1)[1]}"
    marks = [began, time.perf_counter()]
    experiment = scale_experiment(spec_path, name)
    number = suggest_trial(experiment, segment=0, slot=slot)
    marks.append(time.perf_counter())
    told = tell_once(load_study(experiment), number, state=optuna.trial.TrialState.COMPLETE, values=[0.5])
    marks.append(time.perf_counter())
    durations = [b - a for a, b in itertools.pairwise(marks)]
    results.put({"told": told, **dict(zip(SERVICE_PHASES, durations, strict=True))})


def cold_steps(spec_path: str, name: str, target: str, repeats: int) -> dict:
    """``repeats`` suggest steps one after another, each in a fresh process: every phase's samples and p50/p99."""
    results = SPAWN.Queue()
    runs = []
    step = service_suggest_and_tell if target.startswith("service:") else suggest_and_tell
    for repeat in range(repeats):
        process = SPAWN.Process(target=step, args=(spec_path, name, target, 1000 + repeat, results))
        process.start()
        process.join()
        assert process.exitcode == 0, "the suggest step's process failed"
        runs.append(results.get(timeout=60))
        assert runs[-1]["told"], "the suggest step's tell did not take"
    samples = {phase: [run[phase] for run in runs] for phase in runs[0] if phase != "told"}
    if "suggest" not in samples:  # a step that reads and asks itself: its phases add up to the suggest step
        samples["suggest"] = [sum(run[phase] for phase in SUGGEST) for run in runs]
    return {key: {**percentiles_ms(values), "samples_s": values} for key, values in samples.items()}


def lane(spec_path: str, name: str, target: str, slot: int, quota: int, train_seconds: float, start, results) -> None:
    """A long-lived lane: ask -> sample -> "train" -> tell, ``quota`` times; reports what it asked and told.

    Through kubetune's suggest service (``service:PORT``) the lane asks as its suggest step does, and
    tells through the proxy. A lane that fails (the database refusing its connection, say) reports its
    error and what it did before.
    """
    import optuna

    from kubetune import search, space
    from kubetune.study import get_trial, load_study, tell_once

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    report: dict = {"slot": slot, "asked": [], "told": [], "suggest_s": [], "tell_s": [], "error": None}
    study = None
    service = target.startswith("service:")
    try:
        experiment = scale_experiment(spec_path, name)
        if service:
            os.environ["KUBETUNE_STORAGE_PROXY"] = f"grpc://127.0.0.1:{target.split(':', 1)[1]}"
            study = load_study(experiment)
        else:
            study = load_study(experiment, storage=open_target(experiment, target), seed_offset=slot)
            study.get_trials(deepcopy=False)
    except Exception as error:  # noqa: BLE001 - reported with the results
        report["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    start.wait()
    report["began"] = time.perf_counter()
    try:
        for _ in range(quota if study is not None else 0):
            tick = time.perf_counter()
            if service:
                number = search.suggest_trial(experiment, segment=0, slot=slot)
                recorded = get_trial(study, number)
                chosen, architecture = recorded.params, recorded.user_attrs["architecture"]
            else:
                trial = study.ask()
                chosen, architecture = space.sample(trial, experiment.spec)
                number = trial.number
            report["asked"].append(number)
            report["suggest_s"].append(time.perf_counter() - tick)
            time.sleep(train_seconds)
            tick = time.perf_counter()
            value = objective(chosen, architecture)
            if tell_once(study, number, state=optuna.trial.TrialState.COMPLETE, values=[value]):
                report["told"].append(number)
            report["tell_s"].append(time.perf_counter() - tick)
    except Exception as error:  # noqa: BLE001 - reported with the results
        report["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    report["ended"] = time.perf_counter()
    results.put(report)


def integrity(trials: list, reports: list[dict]) -> dict:
    """What went wrong between the lanes and the study: every count is 0 when nothing did."""
    from optuna.trial import TrialState

    asked = Counter(n for r in reports for n in r["asked"])
    told = Counter(n for r in reports for n in r["told"])
    numbers = Counter(t.number for t in trials)
    complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
    return {
        "trials": len(trials),
        "complete": len(complete),
        "not_complete": sum(t.state != TrialState.COMPLETE for t in trials),
        "duplicate_numbers": sum(c - 1 for c in numbers.values()),
        "asked_twice": sum(c - 1 for c in asked.values()),
        "told_twice": sum(c - 1 for c in told.values()),
        "asked_not_told": len(set(asked) - set(told)),
        "lost": len(set(told) - complete),
        "unknown": len(complete - set(asked)),
    }


def concurrent_lanes(url: str, spec_path: str, target: str, lanes: int, quota: int, train_seconds: float) -> dict:
    """``lanes`` lane processes against one fresh study: trials/s, per-call latency and the integrity check."""
    import optuna

    from kubetune.storage import open_storage
    from kubetune.study import ensure_study

    name = f"scale-lanes-{lanes}-{os.getpid()}-{time.time_ns()}"
    experiment = scale_experiment(spec_path, name)
    ensure_study(experiment, storage=open_storage(experiment, url))
    start, results = SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=lane, args=(spec_path, name, target, slot, quota, train_seconds, start, results))
        for slot in range(lanes)
    ]
    for process in processes:
        process.start()
    reports = []
    try:
        time.sleep(2.0 + 0.5 * lanes)  # let every lane import and connect
        start.set()
        reports = [results.get(timeout=1800) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    wall = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    suggest_s = [s for r in reports for s in r["suggest_s"]]
    tell_s = [s for r in reports for s in r["tell_s"]]
    return {
        "lanes": lanes,
        "trials_per_s": sum(len(r["told"]) for r in reports) / wall,
        "wall_s": wall,
        "suggest": {**percentiles_ms(suggest_s), "samples_s": suggest_s},
        "tell": {**percentiles_ms(tell_s), "samples_s": tell_s},
        "integrity": integrity(trials, reports),
        "failed_lanes": [r["error"] for r in reports if r["error"]],
    }


def is_clean(check: dict) -> bool:
    return check["complete"] == check["trials"] and all(
        v == 0 for k, v in check.items() if k not in ("trials", "complete")
    )


def allow_connections(postgres, count: int) -> None:
    """Set the server's max_connections (kept in its data directory) and restart it."""
    import psycopg

    with psycopg.connect(postgres.url("postgres", driver="postgresql"), autocommit=True) as connection:
        connection.execute(f"ALTER SYSTEM SET max_connections = {int(count)}")
    postgres.restart()


@contextlib.contextmanager
def reach(url: str, target: str) -> Iterator[str]:
    """Where the steps reach the study: the database URL, ``grpc:PORT`` of Optuna's proxy started in front of
    it, or ``service:PORT`` of kubetune's proxy, whose suggest service the steps ask."""
    if target == "direct":
        yield url
    elif target == "proxy":
        with grpc_proxy(url) as port:
            yield f"grpc:{port}"
    else:
        with grpc_proxy(url, kubetune=True) as port:
            yield f"service:{port}"


def _sum_p50(cell: dict, *phases: str) -> str:
    """The phases' p50s added up, or "-" for a step that does not do them itself (the service's)."""
    return f"{sum(cell[p]['p50_ms'] for p in phases):.0f}" if all(p in cell for p in phases) else "-"


def measure_sizes(postgres, args) -> list[dict]:
    """The cold suggest step and tell per study size and target; prints a row for each."""
    print(
        f"\n{'trials':>7} {'via':<7} {'suggest p50/p99 ms':>19} {'open+read p50':>14} "
        f"{'ask+sample p50':>15} {'tell p50/p99 ms':>16} {'warm-up s':>10}",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        url = postgres.create_database(f"scale_{size}")
        name = f"scale-{size}"
        row: dict = {"size": size, "fill": filled_study(url, scale_experiment(args.spec, name), size)}
        for target in args.targets:
            with reach(url, target) as where:
                warm_up_s = warm_up(args.spec, where, name) if target != "direct" else None
                row[target] = cell = {**cold_steps(args.spec, name, where, args.repeats), "warm_up_s": warm_up_s}
            print(
                f"{size:>7} {target:<7} {cell['suggest']['p50_ms']:>9.0f} /{cell['suggest']['p99_ms']:>7.0f} "
                f"{_sum_p50(cell, 'open', 'read'):>14} {_sum_p50(cell, 'ask', 'sample'):>15} "
                f"{cell['tell']['p50_ms']:>8.0f} /{cell['tell']['p99_ms']:>6.0f} "
                f"{'-' if warm_up_s is None else f'{warm_up_s:.2f}':>10}",
                flush=True,
            )
        rows.append(row)
    small, large = rows[0], rows[-1]
    for target in args.targets if len(rows) > 1 else ():
        a, b = small[target]["suggest"]["p50_ms"], large[target]["suggest"]["p50_ms"]
        verdict = "meets" if b <= 2 * a and b < 1000 else "misses"
        print(
            f"target ({target}): suggest at {large['size']} trials {b:.0f} ms, at {small['size']} {a:.0f} ms: "
            f"within 2x and < 1 s {verdict}"
        )
    return rows


def measure_lanes(postgres, args) -> list[dict]:
    """Throughput, latency and integrity per lane count and target; prints a row for each."""
    url = postgres.create_database("scale_lanes")
    print(
        f"\n{'lanes':>5} {'via':<7} {'trials/s':>9} {'suggest p50/p99 ms':>19} {'tell p50/p99 ms':>16} "
        f"{'integrity':>10}",
        flush=True,
    )
    rows = []
    for target in args.targets:
        for lanes in args.lanes:
            with reach(url, target) as where:
                result = concurrent_lanes(url, args.spec, where, lanes, args.lane_trials, args.train_seconds)
            rows.append({"target": target, **result})
            check = result["integrity"]
            print(
                f"{lanes:>5} {target:<7} {result['trials_per_s']:>9.1f} "
                f"{result['suggest']['p50_ms']:>9.0f} /{result['suggest']['p99_ms']:>7.0f} "
                f"{result['tell']['p50_ms']:>8.0f} /{result['tell']['p99_ms']:>6.0f} "
                f"{'ok' if is_clean(check) else check!s:>10}"
                + (f"; {len(failed)} lanes failed: {failed[0]}" if (failed := result["failed_lanes"]) else ""),
                flush=True,
            )
    return rows


def main() -> None:
    import optuna

    from kubetune import devstack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=10, help="fresh suggest steps per size and target")
    parser.add_argument("--lanes", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--lane-trials", type=int, default=8, help="trials each lane asks and tells")
    parser.add_argument("--train-seconds", type=float, default=0.2, help="a lane's 'training' between ask and tell")
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--cache", type=Path, help="keep the PostgreSQL cluster and its filled studies here")
    parser.add_argument("--fast-postgres", action="store_true", help="fsync off, as in the tests")
    parser.add_argument("--spec", default="examples/digits.yaml", help="whose search space the trials sample")
    parser.add_argument("--max-connections", type=int, help="PostgreSQL's max_connections (its default: 100)")
    parser.add_argument("--history", type=int, help="the spec's strategy.sampler.history (TPE's window)")
    args = parser.parse_args()
    machine = (
        f"optuna {optuna.__version__}, {os.cpu_count()} CPUs, PostgreSQL fsync {'off' if args.fast_postgres else 'on'}"
    )
    print(f"{machine}; search space of {args.spec}; {args.repeats} fresh steps per cell", flush=True)
    workdir = args.cache or devstack.make_workdir("kubetune-scale-")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cache and os.geteuid() == 0:
        workdir.chmod(0o711)  # PostgreSQL runs as user postgres and must reach its folder in it
    if args.history is not None:
        args.spec = with_history(args.spec, args.history, workdir)
    postgres = devstack.Postgres(workdir / "pg", fast=args.fast_postgres).start()
    if args.max_connections:
        allow_connections(postgres, args.max_connections)
    settings = {**vars(args), "cache": str(args.cache), "optuna": optuna.__version__}
    try:
        # Each part keeps its own file, named after what it measured, so one run does not replace another's.
        parts = (("sizes", measure_sizes, args.sizes), ("lanes", measure_lanes, args.lanes))
        for part, measure, wanted in parts:
            if wanted:
                load_before = os.getloadavg()
                rows = measure(postgres, args)
                load = {"before": load_before, "after": os.getloadavg()}
                via = [] if args.targets == TARGETS else args.targets
                window = [] if args.history is None else ["history", str(args.history)]
                name = "-".join(["study_scale", part, *map(str, wanted), *via, *window])
                write_results(name, {"settings": settings, "load_average": load, part: rows})
    finally:
        postgres.stop()
        if not args.cache:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
