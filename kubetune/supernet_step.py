"""The search-supernet step: weight-sharing work that runs once per study, before any lane asks for a trial.

With strategy.oneShot it ranks candidates and enqueues the best (:mod:`kubetune.one_shot`); with sampler
darts it runs the DARTS searches whose derived cells the trials train (:mod:`kubetune.darts_sampler`). It
runs in the trial's pod (the trainer image, GPUs when the spec asks), at every segment's start, and returns
at once when the study already records its work, so a retried or later segment never repeats it.
"""

from __future__ import annotations

import time

import torch

from kubetune import darts, encoding, one_shot, space, tracking
from kubetune.darts_sampler import SUPERNET_ATTR
from kubetune.data import SplitData, read_split
from kubetune.search import train_threads
from kubetune.spec import CellSpace, Experiment
from kubetune.study import load_study, once_per_study
from kubetune.supernet import Supernet, frames

__all__ = ["darts_searches", "search_supernet"]


def search_supernet(experiment: Experiment, *, split_path: str) -> dict:
    """Do the spec's supernet work once; returns its summary (also in the study and on the parent MLflow run)."""
    study = load_study(experiment)

    def work() -> dict:
        torch.set_num_threads(train_threads(experiment))
        split = read_split(split_path)
        seed = experiment.spec.strategy.sampler.seed or 0
        if experiment.spec.strategy.one_shot is not None:
            return one_shot.enqueue_top(study, experiment, split, seed=seed)
        return darts_searches(experiment, split, seed=seed)

    summary, ran = once_per_study(study, SUPERNET_ATTR, work, what="supernet work")
    if ran:
        tracking.log_supernet(study.user_attrs["mlflow_parent_run_id"], summary)
    return summary


def darts_searches(experiment: Experiment, split: SplitData, *, seed: int) -> dict:
    """``sampler.searches`` DARTS searches (one per frame by default), search i on frame i modulo the frames
    with seed ``seed + i``; each derived cell with the Optuna parameters that select it.

    DARTS keeps two inputs per node and makes the others ``zero``; a space without ``zero`` keeps them all.
    """
    sampler, cell_space = experiment.spec.strategy.sampler, experiment.spec.architecture
    assert isinstance(cell_space, CellSpace), "the spec's rules let only a cell space here"
    inputs = darts.DARTS_INPUTS if "zero" in cell_space.operations.choices else cell_space.nodes
    all_frames = frames(cell_space)
    count = sampler.searches or len(all_frames)
    started = time.perf_counter()
    cells = []
    for search in range(count):
        frame_cells, width = all_frames[search % len(all_frames)]
        net = Supernet.for_split(cell_space, split, cells=frame_cells, width=width, seed=seed + search)
        result = darts.search(
            net,
            split,
            epochs=sampler.epochs,
            hyperparameters=one_shot.supernet_hyperparameters(experiment),
            seed=seed + search,
            inputs=inputs,
        )
        code = encoding.encode(result.architecture)
        cells.append(
            {
                "search": search,
                "frame": f"c{frame_cells}w{width}",
                "seed": seed + search,
                "code": code,
                "params": space.cell_params(result.architecture, cell_space),
                "weights": [[round(w, 4) for w in row] for row in result.weights],
                "seconds": round(result.seconds, 2),
            }
        )
        print(
            f"kubetune: DARTS search {search + 1} of {count} (cells {frame_cells}, width {width}, seed "
            f"{seed + search}): {code} in {result.seconds:.0f} s",
            flush=True,
        )
    return {"strategy": "darts", "cells": cells, "seconds": round(time.perf_counter() - started, 2)}
