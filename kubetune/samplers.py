"""The sampler and the pruner an experiment's strategy names, built from Optuna's."""

from __future__ import annotations

import optuna

from kubetune import optuna_messages
from kubetune.curve_pruner import CurvePruner
from kubetune.darts_sampler import DartsSampler
from kubetune.evolution import RegularizedEvolutionSampler
from kubetune.reinforce import ReinforceSampler
from kubetune.spec import Experiment
from kubetune.tpe import TPESampler

__all__ = ["make_pruner", "make_sampler"]

optuna_messages.quiet()


def make_sampler(experiment: Experiment, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in the spec; ``seed_offset`` keeps parallel lanes from drawing the same points."""
    spec = experiment.spec
    base = spec.strategy.sampler.seed
    seed = None if base is None else (base + seed_offset) % 2**32  # numpy takes seeds below 2**32
    name = spec.strategy.sampler.name
    startup = max(3, min(10, spec.budget.max_trials // 4))
    if name == "tpe":
        return TPESampler(
            history=spec.strategy.sampler.history,
            seed=seed,
            n_startup_trials=startup,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        # Walks the space as sample() suggests it, so conditional dimensions never multiply the points.
        return optuna.samplers.BruteForceSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.parallel_trials * 2))
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "evolution":
        sampler = spec.strategy.sampler
        return RegularizedEvolutionSampler(population=sampler.population, tournament=sampler.tournament, seed=seed)
    if name == "rl":
        return ReinforceSampler(seed=seed)
    if name == "darts":
        return DartsSampler(seed=seed)
    raise ValueError(f"no sampler is built for strategy.sampler.name {name!r}")  # the spec admitted a name we lack


def make_pruner(experiment: Experiment) -> optuna.pruners.BasePruner:
    """The pruner named in the spec; Hyperband's and the curve's maximum resource is the trial's epochs, or the
    top level's step with fidelity dataFraction or width (:mod:`kubetune.fidelity`)."""
    spec = experiment.spec
    pruner = spec.strategy.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
    if pruner.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    top = spec.trial.epochs if spec.trial.fidelity.kind == "epochs" else spec.fidelity_ladder[-1].step
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, max_resource=top, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "curve":
        return CurvePruner(
            max_resource=top,
            threshold=pruner.threshold,
            min_resource=pruner.min_resource,
            n_startup_trials=pruner.startup_trials,
        )
    return optuna.pruners.NopPruner()
