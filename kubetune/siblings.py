"""strategy.seeds and strategy.baseline: the studies one experiment stands for.

``seeds: N`` repeats the whole search N times: the experiment itself, then ``<name>-seed-<k>`` for k = 2..N
with sampler seed ``seed + k - 1`` (the data split stays the same). ``baseline: random`` spends the same
budget again with random search on ``<name>-baseline-random`` (and ``-seed-<k>`` for each repeat), the same
seeds, pruner, fidelity and trial settings, so a report compares the search with a measured baseline
instead of an assumed one. Each sibling is an ordinary experiment (its spec has seeds 1 and no baseline),
with a study, MLflow experiment and registered model of its own name, so none can overwrite another's
champion; its labels name the experiment it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubetune.spec import Experiment, parse_experiment

__all__ = ["BASELINE_SUFFIX", "Sibling", "names", "studies"]

BASELINE_SUFFIX = "-baseline-random"
SIBLING_OF_LABEL = "kubetune-sibling-of"


@dataclass(frozen=True)
class Sibling:
    """One study of the experiment: ``role`` search or baseline, ``repeat`` 1..seeds."""

    role: Literal["search", "baseline"]
    repeat: int
    experiment: Experiment


def studies(experiment: Experiment) -> list[Sibling]:
    """The experiment itself first, then its seed repeats, then the baselines of each repeat in turn."""
    strategy = experiment.spec.strategy
    searches = [Sibling("search", 1, experiment)] + [
        Sibling("search", k, _variant(experiment, f"{experiment.name}-seed-{k}", k, baseline=False))
        for k in range(2, strategy.seeds + 1)
    ]
    if strategy.baseline != "random":
        return searches
    baselines = [
        Sibling("baseline", k, _variant(experiment, _baseline_name(experiment.name, k), k, baseline=True))
        for k in range(1, strategy.seeds + 1)
    ]
    return searches + baselines


def names(experiment: Experiment) -> dict[str, list[str]]:
    """The study names by role, the experiment's first: the main study records this as ``siblings``."""
    found: dict[str, list[str]] = {"seeds": [], "baseline": []}
    for sibling in studies(experiment):
        found["seeds" if sibling.role == "search" else "baseline"].append(sibling.experiment.name)
    return found


def _baseline_name(name: str, repeat: int) -> str:
    return name + BASELINE_SUFFIX + (f"-seed-{repeat}" if repeat > 1 else "")


def _variant(experiment: Experiment, name: str, repeat: int, *, baseline: bool) -> Experiment:
    data = experiment.to_dict()
    data["metadata"]["name"] = name
    data["metadata"]["labels"] = {**data["metadata"].get("labels", {}), SIBLING_OF_LABEL: experiment.name}
    spec = data["spec"]
    strategy = spec["strategy"]
    seed = strategy["sampler"].get("seed")
    seed = None if seed is None else seed + repeat - 1
    if baseline:  # random search with the same pruner: what the sampler and its helpers add is what is compared
        spec["strategy"] = {"sampler": {"name": "random", "seed": seed}, "pruner": strategy["pruner"]}
    else:
        strategy["sampler"]["seed"] = seed
        strategy.update(seeds=1, baseline="none")
    spec.setdefault("registry", {})["modelName"] = name
    return parse_experiment(data)
