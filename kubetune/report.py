"""What a person looks at after a search: the summary and Optuna's plots on the parent MLflow run."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from kubetune import settings
from kubetune.spec import Experiment
from kubetune.study import best_trial, count_trials

__all__ = ["summarize", "write_plots", "where_to_look"]


def _wall_seconds(study: optuna.Study) -> float:
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if not trials:
        return 0.0
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete or t.datetime_start for t in trials)
    return (end - start).total_seconds()


def summarize(study: optuna.Study, experiment: Experiment) -> dict:
    """Best value(s), parameters and architecture, trial counts, wall time and the stop reason."""
    counts = count_trials(study)
    best = best_trial(study, experiment)
    metrics = [o.metric for o in experiment.spec.objectives]
    summary = {
        "experiment": experiment.name,
        "trials_complete": counts.complete,
        "trials_pruned": counts.pruned,
        "trials_failed": counts.failed,
        "trials_budget": experiment.spec.budget.max_trials,
        "wall_seconds": round(_wall_seconds(study), 1),
        "stop_reason": study.user_attrs.get("stop_reason"),
        "segments": study.user_attrs.get("segment", 0),
    }
    if best is not None:
        summary["best_trial"] = best.number
        summary.update({f"best_{metric}": value for metric, value in zip(metrics, best.values)})
        summary["best_hyperparameters"] = best.user_attrs.get("hyperparameters", {})
        summary["best_architecture"] = best.user_attrs.get("architecture")
    if experiment.spec.is_multi_objective:
        summary["pareto_front"] = [t.number for t in study.best_trials]
    return summary


def write_plots(study: optuna.Study, experiment: Experiment, directory: str | Path) -> dict[str, str]:
    """HTML plots: history, parameter importances, parallel coordinates, and the Pareto front if any."""
    import optuna.visualization as vis

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    metric = experiment.spec.objectives[0].metric
    first = {"target": (lambda t: t.values[0]), "target_name": metric} if experiment.spec.is_multi_objective else {}
    makers = {"optimization_history": lambda: vis.plot_optimization_history(study, **first)}
    if len(completed) >= 2:
        makers["param_importances"] = lambda: vis.plot_param_importances(study, **first)
        makers["parallel_coordinate"] = lambda: vis.plot_parallel_coordinate(study, **first)
    if experiment.spec.is_multi_objective:
        names = [o.metric for o in experiment.spec.objectives]
        makers["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=names)
    written = {}
    for name, make in makers.items():
        try:
            figure = make()
        except (ValueError, RuntimeError) as error:  # e.g. importances need varied parameters
            optuna.logging.get_logger("kubetune").warning("plot %s skipped: %s", name, error)
            continue
        path = directory / f"{name}.html"
        figure.write_html(str(path), include_plotlyjs=True)
        written[name] = str(path)
    return written


def where_to_look(experiment: Experiment) -> dict[str, str]:
    """The commands that open the results (URLs with passwords hidden)."""
    tracking = settings.tracking_uri()
    storage = settings.redact(settings.storage_url())
    mlflow_ui = tracking if tracking.startswith("http") else f"mlflow ui --backend-store-uri {tracking}"
    return {
        "mlflow": mlflow_ui,
        "optuna_dashboard": f"optuna-dashboard {storage}",
        "study": experiment.name,
    }
