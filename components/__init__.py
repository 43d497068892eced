"""KFP components: thin, typed doors into the kubetune core.

Each module holds one component function whose body parses the experiment spec and calls one core
function. Components are built per image at pipeline-build time (``build``), so the trainer can run
on a CUDA image while the other steps use the CPU runtime image.
"""

from __future__ import annotations

from collections.abc import Callable

from kfp import dsl

from kubetune.components.ensure_study import ensure_study
from kubetune.components.evaluate_trial import evaluate_trial
from kubetune.components.next_segment import next_segment
from kubetune.components.register_best import register_best
from kubetune.components.retrieve_data import retrieve_data
from kubetune.components.run_trials import run_trials
from kubetune.components.search_supernet import search_supernet
from kubetune.components.suggest_trial import suggest_trial
from kubetune.components.train_trial import train_trial
from kubetune.components.warm_start import warm_start

__all__ = ["FUNCTIONS", "build"]

FUNCTIONS: dict[str, Callable] = {
    "retrieve-data": retrieve_data,
    "ensure-study": ensure_study,
    "search-supernet": search_supernet,
    "warm-start": warm_start,
    "suggest-trial": suggest_trial,
    "train-trial": train_trial,
    "run-trials": run_trials,
    "evaluate-trial": evaluate_trial,
    "register-best": register_best,
    "next-segment": next_segment,
}


def build(name: str, *, image: str):
    """The KFP component ``name`` running on ``image`` (which must have kubetune and kfp installed)."""
    return dsl.component(FUNCTIONS[name], base_image=image, install_kfp_package=False)
