"""A cheap deterministic objective on kubetune's real digits space, for testing samplers without training."""

from __future__ import annotations

import math

import optuna
from optuna.storages import InMemoryStorage

from kubetune import space
from kubetune.samplers import make_sampler
from kubetune.spec import Experiment


def digits_score(trial: optuna.Trial, experiment: Experiment) -> float:
    """Samples the spec's space through kubetune.space; higher for adam, a mid learning rate, wide conv blocks."""
    chosen, architecture = space.sample(trial, experiment.spec)
    blocks = (architecture or {"blocks": []})["blocks"]
    width = sum(b["width"] * (1.5 if b["kind"] == "conv" else 1.0) for b in blocks) / 300
    return width + (chosen["optimizer"] == "adam") * 0.3 - abs(math.log10(chosen["lr"]) + 2.5) * 0.2


def seeded_search(experiment: Experiment, *, fresh_sampler_each_trial: bool, trials: int = 12) -> list[dict]:
    """The parameters of a one-lane search with the spec's sampler; optionally a new sampler for every trial,
    as each suggest step builds one from the spec and the study."""
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    for _ in range(trials):
        if fresh_sampler_each_trial:
            study.sampler = make_sampler(experiment)
        study.optimize(lambda trial: digits_score(trial, experiment), n_trials=1)
    return [t.params for t in study.trials]
