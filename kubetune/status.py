"""`kubetune status`: where an experiment stands, read from the study and the MLflow registry."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from kubetune import registry, settings
from kubetune.redaction import redact_url
from kubetune.segments import LOST_LANE_REASON, SUBMITTED_PREFIX
from kubetune.spec import parse_experiment
from kubetune.stop_rules import count_trials
from kubetune.storage import StudyError, open_reader
from kubetune.study import best_trial

__all__ = ["experiment_status", "open_study", "print_status"]


def experiment_status(name: str) -> dict:
    """Trials done, best value, champion version, current segment and stop reason of study ``name``."""
    study = open_study(name)
    experiment = parse_experiment(study.user_attrs["spec"])
    counts = count_trials(study)
    best = best_trial(study, experiment)
    champion = registry.champion(experiment)
    lost = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("fail_reason") == LOST_LANE_REASON
    ]
    attrs = study.user_attrs
    return {
        "experiment": name,
        "trials": f"{counts.consumed} of {experiment.spec.budget.max_trials} done "
        f"({counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed, {counts.running} running)",
        "best": None
        if best is None
        else f"{experiment.spec.objectives[0].metric}={best.values[0]:.4g} (trial {best.number})",
        "champion": None
        if champion is None
        else f"models:/{experiment.model_name}@{experiment.spec.registry.alias} version {champion['version']}",
        "segment": attrs.get("segment", 0),
        "stop_reason": attrs.get("stop_reason") or "running or not started",
        "lost_lanes": None if not lost else f"trials {', '.join(map(str, lost))}: {LOST_LANE_REASON}",
        "submitted_runs": {
            k.removeprefix(SUBMITTED_PREFIX): v for k, v in attrs.items() if k.startswith(SUBMITTED_PREFIX)
        },
    }


def open_study(name: str) -> optuna.Study:
    """The study of experiment ``name``, read-only use; a StudyError naming the database when it is not there."""
    _require_embedded_study()
    url = settings.storage_url()
    try:
        return optuna.load_study(study_name=name, storage=open_reader(url))
    except KeyError:
        raise StudyError(
            f"no experiment {name!r} in the study database {redact_url(url)}; check the name and KUBETUNE_STORAGE"
        ) from None


def _require_embedded_study() -> None:
    """Refuses a home that holds no study file, rather than creating an empty one (or failing in SQLite)."""
    path = settings.embedded_study_file()
    if path is not None and not path.is_file():
        found = "has no study database optuna.db" if settings.home().is_dir() else "does not exist"
        raise StudyError(
            f"the kubetune home {settings.home()} {found}: pass the --home (or KUBETUNE_HOME) that "
            "`kubetune run` used, or KUBETUNE_STORAGE for a study on a database server"
        )


def print_status(status: dict, *, console: Console | None = None) -> None:
    table = Table(title=f"kubetune experiment {status['experiment']}", show_header=False)
    for key in ("trials", "best", "champion", "segment", "stop_reason", "lost_lanes", "submitted_runs"):
        value = status[key]
        table.add_row(key.replace("_", " "), "-" if value in (None, {}) else str(value))
    (console or Console()).print(table)
