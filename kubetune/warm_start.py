"""strategy.warmStart: before any lane asks, enqueue the configurations that the meta model of earlier
experiments (`kubetune meta fit`, :mod:`kubetune.meta`) scores best on this experiment's data.

Runs once per study in its own CPU step before the lanes; the study attribute ``warm_start`` records what it
did (or why it did nothing), so a later segment returns at once. ``candidates`` configurations are drawn from
the spec's space by Optuna's RandomSampler on an in-memory study, featurised with this data set's profile, and
the best ``trials`` are enqueued with the user attribute ``warm_start`` naming the model version; the spec's
sampler takes over after them.
"""

from __future__ import annotations

import numpy as np
import optuna

from kubetune import encoding, meta_store, nas, space
from kubetune.data import SplitData, read_split
from kubetune.meta_features import features, parameter_count
from kubetune.meta_record import data_profile
from kubetune.spec import Experiment
from kubetune.study import load_study, once_per_study

__all__ = ["WARM_START_ATTR", "candidates", "warm_start"]

WARM_START_ATTR = "warm_start"


def warm_start(experiment: Experiment, *, split_path: str) -> dict:
    """Enqueue the best-scored configurations once per study; returns the summary the study records."""
    study = load_study(experiment)

    def work() -> dict:
        summary = _enqueue_best(study, experiment, read_split(split_path))
        print(f"kubetune: warm start: {summary['message']}", flush=True)
        return summary

    return once_per_study(study, WARM_START_ATTR, work, what="warm start")[0]


def candidates(experiment: Experiment, *, count: int, seed: int) -> list[tuple[dict, dict, dict | None]]:
    """``count`` random configurations of the spec's space: (Optuna params, trainer hyperparameters, architecture)."""
    sampling = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = sampling.ask()
        chosen, architecture = space.sample(trial, experiment.spec)
        drawn.append((trial.params, space.trainer_hyperparameters(experiment.spec, chosen), architecture))
    return drawn


def _enqueue_best(study: optuna.Study, experiment: Experiment, split: SplitData) -> dict:
    settings = experiment.spec.strategy.warm_start
    assert settings is not None, "the pipeline runs this step only with strategy.warmStart"
    found = meta_store.latest()
    if found is None:
        return {
            "enqueued": [],
            "message": f"nothing enqueued: no {meta_store.META_MODEL} model is registered; run `kubetune meta fit` "
            "once earlier experiments have completed trials (the sampler starts on its own)",
        }
    model, version = found
    profile = data_profile(split, experiment.spec.data.source)
    seed = experiment.spec.strategy.sampler.seed or 0
    device = "cuda" if experiment.spec.trial.resources.gpu else "cpu"
    pool = candidates(experiment, count=settings.candidates, seed=seed)
    params_of: dict[str, int] = {}  # parameter counts by architecture code: many candidates share one
    rows = []
    for _, hyperparameters, architecture in pool:
        architecture = architecture or nas.default_architecture(split.input_shape)
        code = encoding.encode(architecture)
        if code not in params_of:
            params_of[code] = parameter_count(architecture, profile)
        row = features(
            hyperparameters,
            architecture,
            profile,
            params=params_of[code],
            epochs=experiment.spec.trial.epochs,
            device=device,
        )
        rows.append(list(row.values()))
    scores = model.score(np.array(rows), seed=seed)
    name = f"{meta_store.META_MODEL}/{version}"
    enqueued: list[dict] = []
    seen: set[str] = set()
    for index in np.argsort(-scores, kind="stable"):
        params = pool[index][0]
        key = repr(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        rank = len(enqueued) + 1
        score = round(float(scores[index]), 6)
        suggested_by = {"strategy": "warmStart", "model": name, "rank": rank, "score": score}
        study.enqueue_trial(params, user_attrs={"warm_start": name, "suggested_by": suggested_by}, skip_if_exists=True)
        enqueued.append({"params": params, "rank": rank, "score": score})
        if len(enqueued) == settings.trials:
            break
    return {
        "enqueued": enqueued,
        "model": name,
        "message": f"enqueued the best {len(enqueued)} of {len(pool)} candidates scored by {name} "
        f"(fitted on {model.summary['trials']} trials of {model.summary['studies']} experiments)",
    }
