"""The simplest alternative to kubetune: a plain Optuna script training the same models in one process.

Same spec, data split, search space, sampler, pruner and trainer as `kubetune run`; trials run in
threads (``n_jobs`` = parallelTrials) against an in-memory study. Benchmarks compare against it. With
``strategy.inheritWeights`` a mutated child starts from its parent's weights, kept in memory here instead
of MLflow (kubetune.inheritance does the copying in both).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch

from kubetune import nas, space, train
from kubetune.data import load_split
from kubetune.inheritance import inherit_weights
from kubetune.samplers import make_pruner, make_sampler
from kubetune.spec import Experiment


@dataclass
class SearchRun:
    wall_seconds: float
    train_seconds: float
    values: list[tuple[float, float, int]]  # (seconds since start, value, trial number + 1) per completed trial
    trials: int
    test_accuracy: list[float] = field(default_factory=list)  # per entry of ``values``
    inherited: int = 0  # trials that started from their parent's weights

    @property
    def best(self) -> float:
        return max((v for _, v, _ in self.values), default=float("nan"))

    def first_reaching(self, target: float) -> tuple[float, int] | None:
        """(seconds, trials asked so far) when a trial first reached ``target``, or None."""
        for seconds, value, trials in self.values:
            if value >= target:
                return seconds, trials
        return None


def run_inprocess(
    experiment: Experiment,
    *,
    sampler: str | None = None,
    seed: int | None = None,
    replay: list[dict] | None = None,
    seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    threads: int | None = None,
) -> SearchRun:
    """Run ``experiment``'s whole budget in this process; optionally swap the sampler name or seed.

    ``replay`` (parameters of earlier trials, in order) makes it train exactly those trials instead.
    ``seconds`` stops it once ``clock`` (wall time by default) has advanced that far; ``threads`` pins
    torch's threads (default: the cores shared between the lanes).
    """
    spec = experiment.spec
    overrides = {}
    if sampler is not None or seed is not None:
        strategy = spec.strategy.model_copy(
            update={
                "sampler": spec.strategy.sampler.model_copy(
                    update={k: v for k, v in {"name": sampler, "seed": seed}.items() if v is not None}
                )
            }
        )
        overrides["strategy"] = strategy
    experiment = experiment.model_copy(update={"spec": spec.model_copy(update=overrides)})
    spec = experiment.spec
    lanes = spec.budget.parallel_trials
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // min(lanes, 2)))
    split = load_split(experiment.to_dict()["spec"]["data"])
    study = optuna.create_study(
        directions=spec.directions, sampler=make_sampler(experiment), pruner=make_pruner(experiment)
    )
    metric = spec.objectives[0].metric
    started = clock()
    values: list[tuple[float, float, int]] = []
    tests: list[float] = []
    trained = []
    weights: dict[int, dict] = {}  # trial number -> trained state dict, for inheriting children
    inherited: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        chosen, architecture = space.sample(trial, spec)
        architecture = architecture or nas.default_architecture(split.input_shape)
        seed_value = (spec.strategy.sampler.seed or 0) + trial.number
        model = nas.build_model(
            architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed_value
        )
        parent = study.sampler.parent_of(trial.number) if spec.strategy.inherit_weights else None
        if parent in weights:
            inherit_weights(weights[parent], model)
            inherited.append(trial.number)

        def on_epoch(epoch: int, metrics: dict) -> bool:
            trial.report(metrics[metric], epoch)
            return trial.should_prune()

        result = train.train_model(
            model,
            split,
            epochs=spec.trial.epochs,
            seed=seed_value,
            on_epoch=on_epoch,
            hyperparameters=space.trainer_hyperparameters(spec, chosen),
        )
        trained.append(result.train_seconds)
        if result.status == "pruned":
            raise optuna.TrialPruned()
        if result.status == "failed":
            raise RuntimeError(result.reason)
        value = train.evaluate_model(model, split.x_val, split.y_val)["accuracy"]
        if spec.strategy.inherit_weights:
            weights[trial.number] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        values.append((clock() - started, value, trial.number + 1))
        tests.append(train.evaluate_model(model, split.x_test, split.y_test)["accuracy"])
        return value

    def out_of_time(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if seconds is not None and clock() - started >= seconds:
            study.stop()

    for params in replay or []:
        study.enqueue_trial(params)
    study.optimize(
        objective,
        n_trials=len(replay) if replay else spec.budget.max_trials,
        n_jobs=lanes,
        catch=(RuntimeError,),
        callbacks=[out_of_time],
    )
    return SearchRun(clock() - started, sum(trained), values, len(study.trials), tests, len(inherited))
