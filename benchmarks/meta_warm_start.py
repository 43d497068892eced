"""Warm start from the meta model, leave one data set out: does starting with its picks lower the regret?

Six small data sets that ship with scikit-learn (digits, wine, breast cancer, iris and two generated ones).
On each, a fixed pool of random configurations of one space (optimizer, learning rate, weight decay, one to
three MLP blocks of width 16 to 256 with dropout) is trained once, in process, with kubetune's trainer, and
its validation accuracy recorded: a table. For each held-out data set the meta model (kubetune.meta: features,
pointwise and pairwise models) is fitted on the other data sets' tables; a search over the held-out pool then
takes either random configurations (no warm start) or the model's best ``--warm`` picks first, then random
ones (warm start). Also the rank correlation (rho) of the model's scores with the held-out pool's accuracies. Regret = the pool's best validation accuracy minus the best found after n trials, for
each seed's random order. Searching a fixed trained pool is what keeps it cheap; a real search samples anew.

    python benchmarks/meta_warm_start.py --pool 60 --seeds 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna
import torch
from raw_results import write_results
from scipy.stats import spearmanr
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from kubetune import meta, nas, train
from kubetune.data import SplitData
from kubetune.meta_features import FEATURES, features
from kubetune.meta_record import data_profile

BUDGETS = (5, 10, 20)


def _sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    generated = datasets.make_classification(
        n_samples=1000, n_features=20, n_informative=8, n_classes=3, random_state=0
    )
    skewed = datasets.make_classification(
        n_samples=2000, n_features=40, n_informative=5, weights=[0.8, 0.2], flip_y=0.05, random_state=1
    )
    return {
        "digits": datasets.load_digits(return_X_y=True),
        "wine": datasets.load_wine(return_X_y=True),
        "breast_cancer": datasets.load_breast_cancer(return_X_y=True),
        "iris": datasets.load_iris(return_X_y=True),
        "generated_3class": generated,
        "generated_skewed": skewed,
    }


def _split(x: np.ndarray, y: np.ndarray) -> SplitData:
    """60/20/20, stratified, standardised on the training rows."""
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=0)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
    scaler = StandardScaler().fit(x_train)
    f32 = [scaler.transform(a).astype(np.float32) for a in (x_train, x_val, x_test)]
    return SplitData(
        f32[0], y_train, f32[1], y_val, f32[2], y_test, num_classes=int(y.max()) + 1, input_shape=(x.shape[1],)
    )


def _configurations(count: int, seed: int) -> list[tuple[dict, dict]]:
    """``count`` random (hyperparameters, architecture) pairs of the benchmark's space."""
    rng = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = rng.ask()
        hyperparameters = {
            "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
            "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
            "weightDecay": trial.suggest_float("weightDecay", 1e-6, 1e-2, log=True),
            "batchSize": 32,
        }
        blocks = [
            {
                "kind": "mlp",
                "width": trial.suggest_categorical(f"b{i}.width", [16, 64, 256]),
                "dropout": trial.suggest_float(f"b{i}.dropout", 0.0, 0.5),
            }
            for i in range(trial.suggest_int("blocks", 1, 3))
        ]
        drawn.append((hyperparameters, {"blocks": blocks}))
    return drawn


def table(name: str, split: SplitData, pool: list[tuple[dict, dict]], epochs: int) -> dict:
    """Every configuration of the pool trained once on ``split``: features and validation accuracy."""
    profile = data_profile(split, f"sklearn:{name}")
    rows, values = [], []
    started = time.perf_counter()
    for index, (hyperparameters, architecture) in enumerate(pool):
        model = nas.build_model(architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=index)
        params = nas.count_parameters(model)
        result = train.train_model(model, split, epochs=epochs, hyperparameters=hyperparameters, seed=index)
        value = result.history[-1]["val_accuracy"] if result.status == "complete" and result.history else 0.0
        rows.append(list(features(hyperparameters, architecture, profile, params=params, epochs=epochs).values()))
        values.append(float(value))
    print(f"{name}: {len(pool)} trained in {time.perf_counter() - started:.0f} s, best {max(values):.3f}", flush=True)
    return {"profile": profile, "x": rows, "y": values}


def regrets(values: np.ndarray, first: list[int], seed: int) -> dict[int, float]:
    """Regret after each budget of a search taking ``first``, then the rest of the pool in a random order."""
    rest = [int(i) for i in np.random.default_rng(seed).permutation(len(values)) if int(i) not in first]
    order = [*first, *rest]
    return {n: float(values.max() - values[order[:n]].max()) for n in BUDGETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=60, help="configurations trained per data set")
    parser.add_argument("--seeds", type=int, default=20, help="random orders per data set")
    parser.add_argument("--warm", type=int, default=3, help="the meta model's picks taken first")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pool = _configurations(args.pool, seed=0)
    tables = {name: table(name, _split(x, y), pool, args.epochs) for name, (x, y) in _sets().items()}
    # Every configuration's accuracy per data set; the features are recomputed from the pool by the script.
    results = {
        "args": vars(args),
        "features": FEATURES,
        "pool": pool,
        "tables": {name: {"profile": t["profile"], "y": t["y"]} for name, t in tables.items()},
        "held_out": {},
    }
    print(f"\n{'held out':18} {'rho':>6} " + " ".join(f"{'cold@' + str(n):>9} {'warm@' + str(n):>9}" for n in BUDGETS))
    for held in tables:
        others = [name for name in tables if name != held]
        data = meta.MetaData(
            x=np.array([row for name in others for row in tables[name]["x"]]),
            y=np.array([value for name in others for value in tables[name]["y"]]),
            studies=[name for name in others for _ in tables[name]["y"]],
        )
        model = meta.fit(data, seed=0)
        values = np.array(tables[held]["y"])
        scores = model.score(np.array(tables[held]["x"]), seed=0)
        rho = float(spearmanr(scores, values).statistic)  # the model's ranking of the held-out pool vs the truth
        picks = [int(i) for i in np.argsort(-scores, kind="stable")[: args.warm]]
        cold = [regrets(values, [], seed) for seed in range(args.seeds)]
        warm = [regrets(values, picks, seed) for seed in range(args.seeds)]
        results["held_out"][held] = {
            "picks": picks,
            "pick_values": [float(values[i]) for i in picks],
            "spearman": rho,
            "pool_best": float(values.max()),
            "pool_median": float(np.median(values)),
            "summary": {k: v for k, v in model.summary.items() if k not in ("skipped", "versions")},
            "cold": cold,
            "warm": warm,
        }
        line = " ".join(f"{np.mean([r[n] for r in cold]):9.4f} {np.mean([r[n] for r in warm]):9.4f}" for n in BUDGETS)
        print(f"{held:18} {rho:6.3f} {line}")
    write_results("meta_warm_start", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
