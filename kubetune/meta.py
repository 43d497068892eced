"""Meta-learning from the shared study database: what earlier experiments say about a new one's configurations.

:func:`collect` turns every finished (COMPLETE) trial of every study into :data:`kubetune.meta_features.FEATURES`
and a target, the study's first objective signed so higher is better. :func:`fit` learns two gradient-boosted
models: a pointwise one of the target, and a pairwise one of the improvement of one trial over another of the
same study (validation sets differ between experiments; within one, differences compare like with like).
:class:`MetaModel` scores candidates with both; :mod:`kubetune.meta_store` keeps it in the MLflow registry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune.errors import UserError
from kubetune.meta_features import FEATURES, features, parameter_count
from kubetune.spec import Experiment, SpecError, parse_experiment

__all__ = ["MIN_STUDIES", "MIN_TRIALS", "MetaData", "MetaModel", "NotEnoughTrials", "collect", "fit", "trial_features"]

MIN_TRIALS = 20  # finished trials over all studies, at least
MIN_STUDIES = 2  # a model of one experiment's trials says nothing about data sets
PAIRS_PER_STUDY = 400  # ordered pairs drawn per study for the pairwise model
REFERENCES = 32  # candidates each one is compared with by the pairwise model


class NotEnoughTrials(UserError):
    """The study database holds too few finished trials, or too few studies, to learn from."""


@dataclass
class MetaData:
    """Feature rows, targets and the study each row came from; what was skipped and why."""

    x: np.ndarray
    y: np.ndarray
    studies: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)


def _fidelity_reached(trial: FrozenTrial, experiment: Experiment) -> float:
    """The last fidelity the trial reported at: epochs run over trial.epochs, or the last level's fraction."""
    levels = (trial.user_attrs.get("fidelity") or {}).get("levels") or []
    if not levels:
        return 1.0
    last = levels[-1]
    kind = experiment.spec.trial.fidelity.kind
    if kind == "epochs":
        return float(last["step"]) / experiment.spec.trial.epochs
    return float(last.get(kind, 1.0))


def trial_features(trial: FrozenTrial, experiment: Experiment, profile: dict) -> dict[str, float]:
    """The features of a finished trial, with the network it trained (the default one without a space)."""
    from kubetune import nas

    architecture = trial.user_attrs.get("architecture") or nas.default_architecture(tuple(profile["input_shape"]))
    params = (trial.user_attrs.get("metrics") or {}).get("params") or parameter_count(architecture, profile)
    return features(
        trial.user_attrs.get("hyperparameters", {}),
        architecture,
        profile,
        params=int(params),
        epochs=experiment.spec.trial.epochs,
        fidelity_reached=_fidelity_reached(trial, experiment),
        device=(trial.user_attrs.get("hardware") or {}).get("device", "cpu"),
    )


def _study_rows(study: optuna.Study) -> tuple[list[list[float]], list[float]] | str:
    """The study's feature rows and signed targets, or why it has none."""
    if "spec" not in study.user_attrs or "data_profile" not in study.user_attrs:
        return "no spec or data profile recorded (created before kubetune recorded them)"
    try:
        experiment = parse_experiment(study.user_attrs["spec"])
    except SpecError as error:  # written by another kubetune version
        return f"its recorded spec does not parse here: {str(error).splitlines()[-1].strip()}"
    sign = 1.0 if experiment.spec.directions[0] == "maximize" else -1.0
    profile = study.user_attrs["data_profile"]
    x, y = [], []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = trial_features(trial, experiment, profile)
        x.append([row[name] for name in FEATURES])
        y.append(sign * trial.values[0])
    return (x, y) if x else "no completed trial"


def collect(storage: str | optuna.storages.BaseStorage) -> MetaData:
    """Every completed trial of every study in ``storage`` (a URL or an Optuna storage)."""
    xs: list[list[float]] = []
    ys: list[float] = []
    names: list[str] = []
    skipped: dict[str, str] = {}
    versions: dict[str, dict] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        rows = _study_rows(study)
        if isinstance(rows, str):
            skipped[summary.study_name] = rows
            continue
        xs += rows[0]
        ys += rows[1]
        names += [summary.study_name] * len(rows[1])
        versions[summary.study_name] = {
            k: v for k, v in study.user_attrs.get("versions", {}).items() if k in ("torch", "optuna")
        }
    return MetaData(np.array(xs, dtype=float).reshape(-1, len(FEATURES)), np.array(ys), names, skipped, versions)


def _regressor(seed: int):
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
    )


def _pairs(data: MetaData, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature differences and target differences of ordered pairs of trials of the same study, among ``rows``."""
    rng = np.random.default_rng(seed)
    studies = np.array(data.studies)[rows]
    x, y = [], []
    for name in dict.fromkeys(studies):
        members = rows[studies == name]
        if len(members) * (len(members) - 1) <= PAIRS_PER_STUDY:
            ordered = list(itertools.permutations(members, 2))
        else:  # drawn, never enumerated: a study of 10,000 trials has 10^8 ordered pairs
            first, second = rng.choice(members, size=(2, PAIRS_PER_STUDY))
            ordered = [(i, j) for i, j in zip(first, second, strict=True) if i != j]
        x += [data.x[i] - data.x[j] for i, j in ordered]
        y += [data.y[i] - data.y[j] for i, j in ordered]
    return np.array(x).reshape(-1, len(FEATURES)), np.array(y)


class MetaModel:
    """A pointwise model of the signed metric and a pairwise model of the improvement between two trials."""

    def __init__(self, pointwise, pairwise, summary: dict) -> None:
        self.pointwise, self.pairwise, self.summary = pointwise, pairwise, summary

    def score(self, x: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Higher is better: half the pointwise prediction over the candidates' mean, half the pairwise
        model's mean predicted improvement over up to :data:`REFERENCES` of the candidates."""
        x = np.asarray(x, dtype=float)
        pointwise = self.pointwise.predict(x)
        if self.pairwise is None:
            return pointwise
        rng = np.random.default_rng(seed)
        references = x[rng.choice(len(x), min(REFERENCES, len(x)), replace=False)]
        improvement = np.mean([self.pairwise.predict(x - reference) for reference in references], axis=0)
        return 0.5 * (pointwise - pointwise.mean()) + 0.5 * improvement


def _leave_one_study_out(data: MetaData, seed: int) -> dict:
    """Pointwise error and within-study rank correlation on each study, with the model fitted on the others."""
    from scipy.stats import spearmanr

    studies = np.array(data.studies)
    errors, correlations = [], []
    for name in dict.fromkeys(data.studies):
        held = studies == name
        model = _regressor(seed).fit(data.x[~held], data.y[~held])
        predicted = model.predict(data.x[held])
        errors.append(float(np.mean(np.abs(predicted - data.y[held]))))
        if held.sum() > 2 and np.ptp(data.y[held]) > 0 and np.ptp(predicted) > 0:
            correlations.append(float(spearmanr(predicted, data.y[held]).statistic))
    return {
        "loso_mae": round(float(np.mean(errors)), 6),
        "loso_spearman": round(float(np.mean(correlations)), 6) if correlations else None,
        "loso_studies": len(errors),
    }


def fit(data: MetaData, *, seed: int = 0) -> MetaModel:
    """Fit both models; NotEnoughTrials below :data:`MIN_TRIALS` trials or :data:`MIN_STUDIES` studies."""
    studies = sorted(set(data.studies))
    if len(data.y) < MIN_TRIALS or len(studies) < MIN_STUDIES:
        raise NotEnoughTrials(
            f"kubetune meta fit needs at least {MIN_TRIALS} completed trials from at least {MIN_STUDIES} "
            f"experiments but the study database holds {len(data.y)} from {len(studies)}; run more experiments "
            "(kubetune run), then fit again"
        )
    pointwise = _regressor(seed).fit(data.x, data.y)
    pair_x, pair_y = _pairs(data, np.arange(len(data.y)), seed)
    pairwise = _regressor(seed).fit(pair_x, pair_y) if len(pair_y) else None
    summary = {
        "trials": len(data.y),
        "studies": len(studies),
        "pairs": len(pair_y),
        "features": len(FEATURES),
        **_leave_one_study_out(data, seed),
        "skipped": data.skipped,
        "versions": data.versions,
    }
    return MetaModel(pointwise, pairwise, summary)
