"""Build the tabular NAS benchmark: train every architecture of a small cell space on MNIST-1D, twice.

    nice -n 19 python benchmarks/nas_table.py [--epochs 10] [--seeds 2] [--limit N] [--threads 1]
        [--output benchmarks/data/nas_table_mnist1d.jsonl.gz]

The space is examples/mnist1d-cell.yaml's with 2 nodes instead of 3: 3 edges of 5 operations, 1 or 2
cells, width 16 or 32, so 5**3 * 2 * 2 = 500 architectures, every one trained (a full table, not a
sample, so a replay never meets an architecture the table lacks). Each is trained by the trials' own
code path (kubetune.nas.build_model, kubetune.train.train_model) with fixed hyperparameters, once per
training seed, and one gzip JSON line is appended per (architecture, seed): its kubetune.encoding code,
the validation accuracy after every epoch, test accuracy, parameters and seconds per epoch. The first
line is a header (space, data, hyperparameters, seeds, epochs, and each start's command and versions). A killed run loses at most the training in
progress: a rerun keeps the records it finds, drops a torn last one, and trains only what is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import itertools
import json
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy
import torch

import kubetune
from kubetune.data import load_split
from kubetune.encoding import encode
from kubetune.nas import build_model, count_parameters
from kubetune.train import evaluate_model, train_model

OUTPUT = Path(__file__).resolve().parent / "data" / "nas_table_mnist1d.jsonl.gz"
DATA = {"source": "builtin:mnist1d", "validationFraction": 0.2, "testFraction": 0.2, "seed": 0}
# The spec's architecture section: the replay parses it back into the experiment it searches.
SPACE = {
    "type": "cell",
    "nodes": 2,
    "operations": {"choices": ["conv3", "conv1", "avgpool", "skip", "zero"]},
    "cells": {"low": 1, "high": 2},
    "width": {"choices": [16, 32]},
    "reductions": 1,
}
HYPERPARAMETERS = {"lr": 3e-3, "optimizer": "adam", "batchSize": 128}


def architectures(space: dict) -> list[dict]:
    """Every architecture of ``space``, in a fixed order (edges first, then cells, then width)."""
    edges = [(node, source) for node in range(1, space["nodes"] + 1) for source in range(node)]
    cells = range(space["cells"]["low"], space["cells"]["high"] + 1)
    found = []
    for operations in itertools.product(space["operations"]["choices"], repeat=len(edges)):
        for count, width in itertools.product(cells, space["width"]["choices"]):
            nodes: list[list[str]] = [[] for _ in range(space["nodes"])]
            for (node, _), operation in zip(edges, operations, strict=True):
                nodes[node - 1].append(operation)
            found.append(
                {"type": "cell", "nodes": space["nodes"], "edges": nodes, "cells": count, "width": width}
                | {"reductions": space["reductions"]}
            )
    return found


def read_table(path: Path) -> tuple[dict | None, list[dict]]:
    """The header and the records of a table; a torn record at the end (a killed write) is dropped."""
    header, records = None, []
    try:
        with gzip.open(path, "rt") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                row = json.loads(line)
                if "header" in row:
                    header = row["header"]
                else:
                    records.append(row)
    except (EOFError, gzip.BadGzipFile, zlib.error, json.JSONDecodeError):
        pass
    return header, records


def _append(path: Path, row: dict) -> None:
    """One gzip member per row, closed at once: a kill can tear only the row being written."""
    with gzip.open(path, "at") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def _rewrite(path: Path, header: dict, records: list[dict]) -> None:
    """Start the file again from what survived, so appending never follows a torn member."""
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wt") as handle:
        for row in [{"header": header}, *records]:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    partial.replace(path)


def _header(args: argparse.Namespace) -> dict:
    return {
        "space": SPACE,
        "data": DATA,
        "hyperparameters": HYPERPARAMETERS,
        "epochs": args.epochs,
        "seeds": list(range(args.seeds)),
        "runs": [],
    }


def _this_run(argv: list[str]) -> dict:
    """The exact command and versions of this start; a resumed table lists every start that added to it."""
    return {
        "command": " ".join(["python", "benchmarks/nas_table.py", *argv]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {
            "kubetune": kubetune.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
    }


def train_one(architecture: dict, split, *, epochs: int, seed: int) -> dict:
    """One table record: ``architecture`` trained from ``seed`` as a trial trains it, on the CPU."""
    model = build_model(architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed)
    result = train_model(model, split, epochs=epochs, hyperparameters=HYPERPARAMETERS, seed=seed, device="cpu")
    test = evaluate_model(model, split.x_test, split.y_test, device="cpu")
    return {
        "code": encode(architecture),
        "seed": seed,
        "status": result.status,
        "val_accuracy": [row["val_accuracy"] for row in result.history],
        "seconds": [round(row["seconds"], 4) for row in result.history],
        "test_accuracy": test["accuracy"],
        "parameters": count_parameters(model),
    }


def _progress(done: int, total: int, trained: int, started: float) -> None:
    elapsed = time.monotonic() - started
    rate = trained / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    print(f"{done}/{total} trainings, {rate * 60:.1f}/min, ETA {eta / 60:.0f} min", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds 0 to N-1 per architecture")
    parser.add_argument("--limit", type=int, default=None, help="train only the first N architectures")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    bad = [f"--{k} {v}" for k, v in vars(args).items() if isinstance(v, int) and v < 1]
    if bad:
        print(f"{', '.join(bad)}: must be a positive integer", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    header = _header(args)
    found, records = read_table(args.output) if args.output.exists() else (None, [])
    same = ("space", "data", "hyperparameters", "epochs", "seeds")
    if found is not None and any(found[key] != header[key] for key in same):
        differ = [key for key in same if found[key] != header[key]]
        print(
            f"--output {args.output} holds a table built with other {', '.join(differ)}; "
            "pass another --output or the options in its header",
            file=sys.stderr,
        )
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    header = found or header
    header["runs"].append(_this_run(argv))
    _rewrite(args.output, header, records)
    have = {(row["code"], row["seed"]) for row in records}
    todo = [
        (architecture, seed)
        for architecture in architectures(SPACE)[: args.limit]
        for seed in header["seeds"]
        if (encode(architecture), seed) not in have
    ]
    total = len(todo) + len(records)
    split = load_split(DATA)
    started = time.monotonic()
    for trained, (architecture, seed) in enumerate(todo, start=1):
        _append(args.output, train_one(architecture, split, epochs=args.epochs, seed=seed))
        _progress(len(records) + trained, total, trained, started)
    print(f"{args.output}: {total} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
