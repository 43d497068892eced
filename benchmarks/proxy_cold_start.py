"""A suggest step in a fresh process, straight to PostgreSQL and through the storage proxy.

    python benchmarks/proxy_cold_start.py [--trials 2000] [--repeats 5]

Fills a study on a throwaway PostgreSQL (kubetune.devstack, fsync off) with ``--trials`` finished
trials of three parameters, starts ``python -m kubetune.storage_proxy`` on it, and runs ``--repeats``
fresh processes per way in: each opens the study the way a step does (``kubetune.storage.open_storage``),
reads it, asks constant-liar TPE, samples the three parameters and tells. The proxy is warmed by one
round first (its own first read of the database). Prints the medians in seconds as JSON. A fresh
process still receives every trial through the proxy: it saves the database's work, not the transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kubetune.devstack import Postgres
from kubetune.devstack.process import free_port, make_workdir

STEP = r"""
import json, sys, time
import optuna
from kubetune.spec import parse_experiment
from kubetune.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
experiment = parse_experiment({"apiVersion": "kubetune/v1alpha1", "kind": "Experiment", "metadata": {"name": "bench"},
                               "spec": {"data": {"source": "builtin:digits"}, "objective": {"metric": "val_accuracy"}}})
began = time.perf_counter()
sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=10)
study = optuna.load_study(study_name="bench", storage=open_storage(experiment, sys.argv[1]), sampler=sampler)
study.get_trials(deepcopy=False)
read = time.perf_counter()
trial = study.ask()
trial.suggest_float("lr", 1e-4, 1e-1, log=True)
trial.suggest_categorical("width", [8, 16, 32, 64])
trial.suggest_int("blocks", 1, 3)
asked = time.perf_counter()
study.tell(trial, 0.5)
told = time.perf_counter()
print(json.dumps({"open_read": read - began, "ask_sample": asked - read, "tell": told - asked, "step": told - began}))
"""
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "width": CategoricalDistribution([8, 16, 32, 64]),
    "blocks": IntDistribution(1, 3),
}


def fill(url: str, trials: int) -> None:
    rng = random.Random(0)
    study = optuna.create_study(study_name="bench", storage=url, direction="maximize")
    study.add_trials(
        optuna.trial.create_trial(
            params={"lr": 10 ** rng.uniform(-4, -1), "width": rng.choice([8, 16, 32, 64]), "blocks": rng.randint(1, 3)},
            distributions=DISTRIBUTIONS,
            value=rng.random(),
        )
        for _ in range(trials)
    )


def steps(url: str, repeats: int, home: str) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        env = {**os.environ, "KUBETUNE_HOME": home}
        out = subprocess.run([sys.executable, "-c", STEP, url], capture_output=True, text=True, timeout=120, env=env)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: round(sorted(run[key] for run in runs)[len(runs) // 2], 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = make_workdir("proxy-cold-start-")
    postgres = Postgres(work / "postgres", fast=True)
    postgres.start()
    proxy = None
    try:
        url = postgres.create_database("bench")
        fill(url, options.trials)
        port = free_port()
        with open(work / "proxy.log", "w") as log:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "kubetune.storage_proxy", "--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, "KUBETUNE_STORAGE": url},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if proxy.poll() is not None:
                raise SystemExit((work / "proxy.log").read_text())
            time.sleep(0.1)
        proxied = f"grpc://127.0.0.1:{port}"
        steps(proxied, 1, str(work))  # the proxy's own first read of the study
        result = {"trials": options.trials, "median_of": options.repeats}
        result["direct"] = steps(url, options.repeats, str(work))
        result["proxy"] = steps(proxied, options.repeats, str(work))
        print(json.dumps(result))
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
