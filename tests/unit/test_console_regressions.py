"""kubetune.console: what `kubetune run` prints where no terminal reads it (a file, a Job's log)."""

from __future__ import annotations

import io

from rich.console import Console

from kubetune import console as console_module
from kubetune import local, registry, report
from kubetune import study as study_module
from kubetune.spec import parse_experiment


def _fake_search(monkeypatch, updates):
    """Replaces the search and its bookkeeping: the runner reports ``updates`` and stops."""

    def run_experiment(experiment, *, report, verbose):
        for update in updates:
            report(update)
        return "budget spent"

    monkeypatch.setattr(local, "run_experiment", run_experiment)
    monkeypatch.setattr(study_module, "load_study", lambda experiment: None)
    monkeypatch.setattr(
        report,
        "summarize",
        lambda study, experiment: {
            "experiment": experiment.name,
            "trials_complete": 3,
            "trials_pruned": 0,
            "trials_failed": 0,
            "trials_budget": 500,
            "wall_seconds": 1.0,
        },
    )
    monkeypatch.setattr(registry, "champion", lambda experiment: None)
    monkeypatch.setattr(report, "where_to_look", lambda experiment: {"mlflow": "m", "optuna_dashboard": "o"})


def test_progress_written_to_a_file_is_whole_plain_lines(minimal_spec, monkeypatch):
    minimal_spec["metadata"]["name"] = "a-rather-long-experiment-name-for-a-job-log"
    minimal_spec["spec"]["budget"] = {"maxTrials": 500}
    experiment = parse_experiment(minimal_spec)
    updates = [
        local.Progress(segment=0, done=0, budget=500, running=2, best=None),
        local.Progress(segment=0, done=0, budget=500, running=2, best=None),
        local.Progress(segment=1, done=123, budget=500, running=4, best=0.98765),
    ]
    _fake_search(monkeypatch, updates)
    out = io.StringIO()
    console_module.run_with_progress(experiment, console=Console(file=out, width=80))
    lines = [line for line in out.getvalue().splitlines() if line.startswith(experiment.name + ":")]
    assert lines == [
        f"{experiment.name}: 0/500 trials  segment 0  running 2  best val_accuracy=-  0:00:00",
        f"{experiment.name}: 123/500 trials  segment 1  running 4  best val_accuracy=0.9877  0:00:00",
    ]
    assert "…" not in out.getvalue().split("kubetune experiment")[0]


def test_the_summarys_commands_are_whole_lines_in_a_narrow_log():
    """A Job's log is 80 columns: the MLflow and dashboard commands must not end in an ellipsis."""
    url = "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
    where = {
        "mlflow": f"mlflow ui --backend-store-uri sqlite:////a/long/home/.kubetune/mlflow.db, then open {url}",
        "optuna_dashboard": "optuna-dashboard sqlite:////a/long/home/.kubetune/optuna.db",
    }
    summary = {
        "experiment": "digits-cnn",
        "trials_complete": 1,
        "trials_pruned": 0,
        "trials_failed": 0,
        "trials_budget": 1,
        "wall_seconds": 1.0,
        "champion": "models:/" + "m" * 90 + "@champion",
    }
    output = io.StringIO()
    console_module.print_summary(summary, where, console=Console(file=output, width=80, force_terminal=False))
    lines = output.getvalue().splitlines()
    assert f"MLflow UI: {where['mlflow']}" in lines
    assert f"Optuna dashboard: {where['optuna_dashboard']}" in lines
    assert "…" not in output.getvalue()
