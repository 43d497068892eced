"""What a person looks at after a search: the summary and Optuna's plots on the parent MLflow run."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from kubetune import encoding, settings
from kubetune.redaction import redact_url
from kubetune.spec import Experiment
from kubetune.stop_rules import count_trials
from kubetune.study import best_trial, name_metrics

__all__ = ["summarize", "where_to_look", "write_plots"]


def _wall_seconds(study: optuna.Study) -> float:
    spans = [
        (t.datetime_start, t.datetime_complete or t.datetime_start)
        for t in study.get_trials(deepcopy=False)
        if t.datetime_start is not None
    ]
    if not spans:
        return 0.0
    return (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()


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
        summary.update({f"best_{metric}": value for metric, value in zip(metrics, best.values, strict=True)})
        summary["best_hyperparameters"] = best.user_attrs.get("hyperparameters", {})
        architecture = best.user_attrs.get("architecture")
        summary["best_architecture"] = architecture
        if architecture:
            summary["best_architecture_code"] = encoding.encode(architecture)
    if experiment.spec.is_multi_objective:
        summary["pareto_front"] = [t.number for t in study.best_trials]
    return summary


PARALLEL_AXES = 8  # parameters on the parallel-coordinates plot: more overlap into an unreadable fan
MLFLOW_RUNS_PAGE = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
IMPORTANCE_METHOD = "PED-ANOVA, each scaled by the share of completed trials that set the parameter"


def weighted_importances(study: optuna.Study, experiment: Experiment) -> dict[str, float]:
    """Importances for the first objective, most important first, summing to 1.

    PED-ANOVA rates a conditional parameter on the few trials that set it, so one present in 2 of 21
    trials can come out on top; scaling by the share of trials that set it keeps it in proportion.
    """
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    raw = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=_first_objective(experiment))
    weighted = {name: value * sum(name in t.params for t in completed) / len(completed) for name, value in raw.items()}
    total = sum(weighted.values()) or 1.0
    return dict(sorted(((name, value / total) for name, value in weighted.items()), key=lambda item: -item[1]))


def _importances_if_any(study: optuna.Study, experiment: Experiment) -> dict[str, float]:
    """Weighted importances, or none when fewer than 2 trials completed or the parameters never varied."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        return weighted_importances(study, experiment)
    except (ValueError, RuntimeError) as error:
        optuna.logging.get_logger("kubetune").warning("importance plots skipped: %s", error)
        return {}


def _first_objective(experiment: Experiment):
    """The target for plots of one objective: None (the value) unless the study has several."""
    return (lambda t: t.values[0]) if experiment.spec.is_multi_objective else None


def _importance_figure(importances: dict[str, float], metric: str):
    import plotly.graph_objects as go

    names = list(reversed(importances))  # the most important on top
    figure = go.Figure(
        go.Bar(
            x=[importances[n] for n in names],
            y=names,
            orientation="h",
            text=[f"{importances[n]:.2f}" for n in names],
            textposition="outside",
        )
    )
    figure.update_layout(
        title=f"Parameter importances for {metric}<br><sub>{IMPORTANCE_METHOD}</sub>",
        xaxis_title=f"importance for {metric}",
        yaxis_title="parameter",
    )
    return figure


def _plot_makers(study: optuna.Study, experiment: Experiment) -> dict:
    """What to draw, each as a function that returns a plotly figure."""
    import optuna.visualization as vis

    metric = experiment.spec.objectives[0].metric
    first = {"target": _first_objective(experiment), "target_name": metric}
    makers = {"optimization_history": lambda: vis.plot_optimization_history(study, **first)}
    importances = _importances_if_any(study, experiment)
    if importances:
        makers["param_importances"] = lambda: _importance_figure(importances, metric)
        parallel = {} if experiment.spec.is_multi_objective else first
        makers["parallel_coordinate"] = lambda: vis.plot_parallel_coordinate(
            study, params=list(importances)[:PARALLEL_AXES], **parallel
        )
    if experiment.spec.is_multi_objective:
        makers["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=study.metric_names)
    return makers


def write_plots(study: optuna.Study, experiment: Experiment, directory: str | Path) -> dict[str, str]:
    """HTML plots: history, parameter importances, parallel coordinates of the most important parameters,
    and the Pareto front if any. Each loads plotly.js from its CDN rather than embedding megabytes of it.
    With an architecture space, also the champion's architecture diagram, ``champion_architecture.png``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name_metrics(study, experiment)
    written = _champion_diagram(study, experiment, directory)
    for name, make in _plot_makers(study, experiment).items():
        try:
            figure = make()
        except (ValueError, RuntimeError) as error:
            optuna.logging.get_logger("kubetune").warning("plot %s skipped: %s", name, error)
            continue
        path = directory / f"{name}.html"
        figure.write_html(str(path), include_plotlyjs="cdn")
        written[name] = str(path)
    return written


def _champion_diagram(study: optuna.Study, experiment: Experiment, directory: Path) -> dict[str, str]:
    """The champion's (the registered best trial's) architecture diagram; none without an architecture."""
    from kubetune import diagram

    best = best_trial(study, experiment)
    architecture = best.user_attrs.get("architecture") if best is not None else None
    if not architecture:
        return {}
    return {"champion_architecture": str(diagram.draw(architecture, directory / "champion_architecture.png"))}


def where_to_look(experiment: Experiment) -> dict[str, str]:
    """The commands and pages that open the results (URLs with passwords hidden)."""
    tracking_uri = redact_url(settings.tracking_uri())
    storage = redact_url(settings.storage_url())
    page = _mlflow_runs_page(experiment)
    if tracking_uri.startswith(("http://", "https://")):
        mlflow_ui = tracking_uri.rstrip("/") + "/" + page
    else:
        mlflow_ui = f"mlflow ui --backend-store-uri {tracking_uri}, then open {LOCAL_MLFLOW_UI}/{page}"
    return {
        "mlflow": mlflow_ui,
        "optuna_dashboard": f"optuna-dashboard {storage}",
        "study": experiment.name,
    }


def _mlflow_runs_page(experiment: Experiment) -> str:
    """The experiment's runs in MLflow's "Model training" view (MLflow 3 opens on an empty GenAI overview)."""
    from mlflow.exceptions import MlflowException

    from kubetune import tracking
    from kubetune.errors import UserError

    try:
        found = tracking.client().get_experiment_by_name(experiment.name)
    except (UserError, MlflowException):  # the server went away: the address alone still helps
        found = None
    return "" if found is None else MLFLOW_RUNS_PAGE.format(experiment_id=found.experiment_id)
