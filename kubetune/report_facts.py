"""The facts a reproducibility report states, read from the study database (Lindauer & Hutter's NAS checklist).

Only recorded values: anything a study does not hold is ``None`` (the page says "not recorded"), never a
guess. The result is plain JSON types, so it can be rendered, logged or compared in tests alike.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import re
import statistics
from collections import Counter

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from kubetune.report import summarize
from kubetune.space import trainer_hyperparameters
from kubetune.spec import Experiment, parse_experiment
from kubetune.status import open_study
from kubetune.storage import open_reader

__all__ = ["BASELINE_HINT", "best_so_far", "gather", "sibling_names", "spread"]

BASELINE_SUFFIX = "-baseline-random"
BASELINE_HINT = (
    "no random-search baseline was run for this experiment: add `strategy.baseline: random` to the spec to spend "
    "the same budget on random search in a sibling study, so this comparison is measured"
)


def gather(name: str) -> dict:
    """Every fact of the report on experiment ``name``; a StudyError when the study database lacks it."""
    study = open_study(name)
    experiment = parse_experiment(study.user_attrs["spec"])
    trials = study.get_trials(deepcopy=False)
    summary = summarize(study, experiment)
    champion = _champion(study, summary)
    return {
        "experiment": name,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kubetune_version": _installed_version(),
        "mlflow_parent_run_id": study.user_attrs.get("mlflow_parent_run_id"),
        "objectives": [{"metric": o.metric, "direction": o.resolved_direction} for o in experiment.spec.objectives],
        "summary": summary,
        "search_space": _search_space(study, experiment),
        "versions": study.user_attrs.get("versions"),
        "hardware": _hardware(trials),
        "seeds": _seeds(study, experiment, champion),
        "training": _training(experiment),
        "data": _data(study, experiment),
        "timing": _timing(study, trials),
        "curve": best_so_far(study),
        "evaluation": _evaluation(experiment, champion),
        "comparison": _comparison(study),
    }


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("kubetune")
    except importlib.metadata.PackageNotFoundError:
        return None


def _search_space(study: optuna.Study, experiment: Experiment) -> dict:
    spec = experiment.to_dict()["spec"]
    return {
        "fingerprint": study.user_attrs.get("fingerprint"),
        "fingerprint_matches_spec": study.user_attrs.get("fingerprint") == experiment.search_space_fingerprint(),
        "parameters": spec.get("parameters", {}),
        "architecture": spec.get("architecture"),
    }


def _hardware(trials: list[FrozenTrial]) -> list[dict]:
    """Each distinct hardware record with how many finished trials ran on it; ``None`` counts the unrecorded."""
    finished = [t for t in trials if t.state.is_finished()]
    counts = Counter(json.dumps(t.user_attrs.get("hardware"), sort_keys=True) for t in finished)
    return [{"hardware": json.loads(key), "trials": n} for key, n in counts.most_common()]


def _seeds(study: optuna.Study, experiment: Experiment, champion: FrozenTrial | None) -> dict:
    sampler_seed = experiment.spec.strategy.sampler.seed
    return {
        "sampler": study.user_attrs.get("seed", sampler_seed),
        "data": experiment.spec.data.seed,
        # As kubetune.search seeds a trial's weights and batches.
        "per_trial_rule": "sampler seed + trial number" if sampler_seed is not None else "0 + trial number",
        "champion_trial_seed": None if champion is None else (sampler_seed or 0) + champion.number,
    }


def _training(experiment: Experiment) -> dict:
    spec = experiment.spec
    searched = list(spec.parameters)
    return {
        "fixed_hyperparameters": {k: v for k, v in trainer_hyperparameters(spec, {}).items() if k not in searched},
        "searched_hyperparameters": searched,
        "architecture_searched": spec.architecture is not None,
        "epochs": spec.trial.epochs,
        "fidelity": spec.trial.fidelity.kind,
        "pruner": spec.strategy.pruner.name,
        "sampler": spec.strategy.sampler.name,
        "budget": {"max_trials": spec.budget.max_trials, "parallel_trials": spec.budget.parallel_trials},
    }


def _data(study: optuna.Study, experiment: Experiment) -> dict:
    spec = experiment.to_dict()["spec"]["data"]
    return {"profile": study.user_attrs.get("data_profile"), "spec": spec}


def _utc(moment: dt.datetime) -> dt.datetime:
    """Optuna stores naive local times; the study's ``started_at`` is aware UTC."""
    return moment.astimezone(dt.UTC)


def _started(study: optuna.Study, trials: list[FrozenTrial]) -> dt.datetime | None:
    recorded = study.user_attrs.get("started_at")
    if recorded:
        return dt.datetime.fromisoformat(recorded)
    starts = [_utc(t.datetime_start) for t in trials if t.datetime_start is not None]
    return min(starts, default=None)


def _timing(study: optuna.Study, trials: list[FrozenTrial]) -> dict:
    """From the study's creation to the last trial's completion, and the training time within it."""
    started = _started(study, trials)
    ends = [_utc(t.datetime_complete) for t in trials if t.datetime_complete is not None]
    finished = max(ends, default=None)
    train = [float(t.user_attrs["train_seconds"]) for t in trials if "train_seconds" in t.user_attrs]
    return {
        "started_at": None if started is None else started.isoformat(timespec="seconds"),
        "finished_at": None if finished is None else finished.isoformat(timespec="seconds"),
        "end_to_end_seconds": None if started is None or finished is None else (finished - started).total_seconds(),
        "train_seconds_sum": sum(train) if train else None,
        "trials_with_train_seconds": len(train),
    }


def best_so_far(study: optuna.Study) -> list[dict]:
    """Completed trials in order of number with the first objective, the best so far and minutes since the start."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    started = _started(study, study.get_trials(deepcopy=False))
    better = max if study.directions[0] == StudyDirection.MAXIMIZE else min
    points: list[dict] = []
    for trial in complete:
        value = trial.values[0]
        best = value if not points else better(points[-1]["best"], value)
        minutes = None
        if started is not None and trial.datetime_complete is not None:
            minutes = (_utc(trial.datetime_complete) - started).total_seconds() / 60
        points.append({"trial": trial.number, "value": value, "best": best, "minutes": minutes})
    return points


def _champion(study: optuna.Study, summary: dict) -> FrozenTrial | None:
    """The registered trial (the model behind the alias), else the best one."""
    number = study.user_attrs.get("registered_trial", summary.get("best_trial"))
    matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return matches[0] if matches else None


def _evaluation(experiment: Experiment, champion: FrozenTrial | None) -> dict:
    metrics = {} if champion is None else champion.user_attrs.get("metrics", {})
    return {
        "selection_metrics": [o.metric for o in experiment.spec.objectives],
        "test_fraction": experiment.spec.data.test_fraction,
        "validation_fraction": experiment.spec.data.validation_fraction,
        "champion_trial": None if champion is None else champion.number,
        "champion_validation": {k: v for k, v in metrics.items() if k.startswith("val_")},
        "champion_test": {k: v for k, v in metrics.items() if k.startswith("test_")},
    }


def sibling_names(study: optuna.Study, existing: list[str]) -> dict[str, list[str]]:
    """The study names of the repeated searches (this one first) and of the random baselines.

    The study's ``siblings`` attribute names them; without it, the studies that follow the naming of
    ``strategy.baseline`` and ``strategy.seeds`` and exist in the database.
    """
    recorded = study.user_attrs.get("siblings")
    if recorded:
        return {
            "seeds": list(recorded.get("seeds") or [study.study_name]),
            "baseline": list(recorded.get("baseline") or []),
        }
    name = re.escape(study.study_name)
    seeds = sorted((n for n in existing if re.fullmatch(rf"{name}-seed-\d+", n)), key=_seed_number)
    baseline = sorted(
        (n for n in existing if re.fullmatch(rf"{name}{BASELINE_SUFFIX}(-seed-\d+)?", n)), key=_seed_number
    )
    return {"seeds": [study.study_name, *seeds], "baseline": baseline}


def _seed_number(name: str) -> int:
    """k of ``...-seed-k``; 1 for the first run, which has no suffix."""
    tail = name.rsplit("-seed-", 1)
    return int(tail[1]) if len(tail) == 2 else 1


def spread(curves: list[list[float]]) -> list[dict]:
    """Min, median and max of the best-so-far at each trial index over the curves that reached it."""
    longest = max((len(c) for c in curves), default=0)
    rows = []
    for index in range(longest):
        values = [c[index] for c in curves if len(c) > index]
        rows.append(
            {
                "index": index + 1,
                "min": min(values),
                "median": statistics.median(values),
                "max": max(values),
                "runs": len(values),
            }
        )
    return rows


def _group(study: optuna.Study, members: list[str], storage: str | BaseStorage) -> dict:
    """Each member study's best-so-far curve; members not in the database are listed, not filled in."""
    runs: list[dict] = []
    missing: list[str] = []
    for member in members:
        try:
            sibling = study if member == study.study_name else optuna.load_study(study_name=member, storage=storage)
        except KeyError:
            missing.append(member)
            continue
        curve = [point["best"] for point in best_so_far(sibling)]
        runs.append({"study": member, "best_so_far": curve, "best": curve[-1] if curve else None})
    return {"runs": runs, "missing": missing, "spread": spread([run["best_so_far"] for run in runs])}


def _comparison(study: optuna.Study) -> dict:
    """Best-so-far over trials of each repeated search and each random baseline, and their spread."""
    storage = open_reader()
    names = sibling_names(study, optuna.get_all_study_names(storage=storage))
    seeds, baseline = _group(study, names["seeds"], storage), _group(study, names["baseline"], storage)
    return {"seeds": seeds, "baseline": baseline, "baseline_hint": None if baseline["runs"] else BASELINE_HINT}
