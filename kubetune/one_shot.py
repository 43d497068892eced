"""strategy.oneShot: rank a cell space's candidates with weight-sharing supernets and enqueue the best k as the
study's first trials, which the spec's sampler then follows.

One supernet per frame (cells, width: :func:`kubetune.supernet.frames`) is trained single-path, and scores up
to ``candidates`` cells of its frame (all of them when the frame has no more) by validation accuracy with the
shared weights. Scores of different supernets are not comparable (a wider supernet scores every candidate of
its frame higher, say), so the top k are taken round-robin over the frames' rankings: every frame's best
first, then every frame's second, and so on, best score first within a round.

Each enqueued trial carries ``suggested_by`` (strategy, frame, rank in its frame, score); hyperparameters that
the spec searches are left to the sampler, and the supernets train with the trainer's defaults.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import optuna

from kubetune import cell_model, encoding, space
from kubetune.data import SplitData
from kubetune.spec import CellSpace, Experiment
from kubetune.supernet import Supernet, frames, train_one_shot

__all__ = ["candidates", "enqueue_top", "interleave", "supernet_hyperparameters"]


def supernet_hyperparameters(experiment: Experiment) -> dict[str, Any]:
    """What every supernet trains with: the trainer's defaults and the spec's fixed trial settings."""
    return space.trainer_hyperparameters(experiment.spec, {})


def candidates(cell_space: CellSpace, cells: int, width: int, *, count: int, seed: int) -> list[dict]:
    """Up to ``count`` distinct cells of the frame: every one when the frame has no more, else a uniform draw."""
    operations = [str(name) for name in cell_space.operations.choices]
    edges = cell_space.edges
    if len(operations) ** len(edges) <= count:
        picks = list(itertools.product(range(len(operations)), repeat=len(edges)))
    else:
        rng = np.random.default_rng([seed, cells, width])
        drawn: dict[tuple[int, ...], None] = {}
        while len(drawn) < count:
            drawn[tuple(int(i) for i in rng.integers(len(operations), size=len(edges)))] = None
        picks = list(drawn)
    found = []
    for pick in picks:
        nodes: list[list[str]] = [[] for _ in range(cell_space.nodes)]
        for (node, _), index in zip(edges, pick, strict=True):
            nodes[node - 1].append(operations[index])
        frame = {"cells": cells, "width": width, "reductions": cell_space.reductions}
        found.append(cell_model.validate({"type": "cell", "nodes": cell_space.nodes, "edges": nodes, **frame}))
    return found


def interleave(rankings: list[list[tuple[float, dict]]], k: int) -> list[tuple[int, float, dict]]:
    """The first ``k`` of round-robin over per-frame rankings (each best first): ``(rank in its frame, score,
    architecture)``, within a round by score."""
    rounds = itertools.zip_longest(*rankings)
    picked = []
    for rank, entries in enumerate(rounds, start=1):
        for score, architecture in sorted((e for e in entries if e is not None), key=lambda e: -e[0]):
            picked.append((rank, score, architecture))
    return picked[:k]


def enqueue_top(study: optuna.Study, experiment: Experiment, split: SplitData, *, seed: int) -> dict:
    """Train a supernet per frame, rank its candidates, enqueue the top k; a summary for the study and MLflow."""
    one_shot = experiment.spec.strategy.one_shot
    cell_space = experiment.spec.architecture
    assert one_shot is not None and isinstance(cell_space, CellSpace), "the spec's rules let only a cell space here"
    started = time.perf_counter()
    rankings, trained = [], []
    all_frames = frames(cell_space)
    for index, (cells, width) in enumerate(all_frames, start=1):
        net = Supernet.for_split(cell_space, split, cells=cells, width=width, seed=seed)
        result = train_one_shot(
            net, split, epochs=one_shot.epochs, hyperparameters=supernet_hyperparameters(experiment), seed=seed
        )
        if result.status != "complete":
            raise RuntimeError(f"the supernet of cells {cells}, width {width} did not train: {result.reason}")
        pool = candidates(cell_space, cells, width, count=one_shot.candidates, seed=seed)
        scored = [(net.evaluate(architecture, split)["accuracy"], architecture) for architecture in pool]
        rankings.append(sorted(scored, key=lambda entry: -entry[0]))
        trained.append({"cells": cells, "width": width, "seconds": round(result.train_seconds, 2), "scored": len(pool)})
        print(
            f"kubetune: supernet {index} of {len(all_frames)} (cells {cells}, width {width}): trained "
            f"{one_shot.epochs} epochs in {result.train_seconds:.0f} s, scored {len(pool)} candidates",
            flush=True,
        )
    enqueued = []
    for rank, score, architecture in interleave(rankings, one_shot.top_k):
        code = encoding.encode(architecture)
        suggested_by = {"strategy": "oneShot", "frame": f"c{architecture['cells']}w{architecture['width']}"}
        study.enqueue_trial(
            space.cell_params(architecture, cell_space),
            user_attrs={"suggested_by": {**suggested_by, "rank": rank, "score": round(score, 6), "code": code}},
            skip_if_exists=True,
        )
        enqueued.append({"code": code, "rank": rank, "score": round(score, 6)})
    return {
        "strategy": "oneShot",
        "supernets": trained,
        "enqueued": enqueued,
        "seconds": round(time.perf_counter() - started, 2),
    }
