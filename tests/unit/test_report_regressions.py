"""kubetune.report: plots that do not mislead, named metrics, no embedded plotly.js, a useful MLflow link."""

from __future__ import annotations

import json
import re

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from kubetune import report
from kubetune.spec import parse_experiment

RARE = "arch.b3.dropout"
RARE_VALUES = {5: 0.01, 15: 0.99}


@pytest.fixture
def experiment(minimal_spec):
    return parse_experiment(minimal_spec)


@pytest.fixture
def study():
    """21 completed trials: val_accuracy follows lr; 16 noise parameters; RARE set in 2 trials only."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    unit = FloatDistribution(0.0, 1.0)
    for number in range(21):
        params = {"lr": float(rng.uniform()), **{f"noise{i:02d}": float(rng.uniform()) for i in range(16)}}
        if number in RARE_VALUES:  # Optuna's default PED-ANOVA rates RARE 0.70 here, lr 0.16
            params[RARE] = RARE_VALUES[number]
        value = params["lr"] + 0.05 * float(rng.uniform())
        study.add_trial(create_trial(params=params, distributions={name: unit for name in params}, value=value))
    return study


def _figure(path) -> dict:
    """The data and layout of the figure in one of plotly's HTML files."""
    html = open(path).read()
    start = html.index("[", html.index("Plotly.newPlot("))
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(html, start)
    layout, _ = decoder.raw_decode(html, html.index("{", end))
    return {"data": data, "layout": layout}


def _title(figure: dict) -> str:
    title = figure["layout"].get("title", {})
    return title.get("text", "") if isinstance(title, dict) else str(title)


def test_a_rarely_set_parameter_is_not_the_most_important(study, experiment, tmp_path):
    plots = report.write_plots(study, experiment, tmp_path)
    figure = _figure(plots["param_importances"])
    bars = dict(zip(figure["data"][0]["y"], figure["data"][0]["x"], strict=True))
    assert max(bars, key=bars.get) == "lr"
    assert bars[RARE] < bars["lr"] / 2
    assert "share of completed trials that set the parameter" in _title(figure)


def test_parallel_coordinates_show_only_the_most_important_parameters(study, experiment, tmp_path):
    plots = report.write_plots(study, experiment, tmp_path)
    labels = _figure(plots["parallel_coordinate"])["layout"]["xaxis"]["ticktext"]  # one tick per axis
    assert len(labels) == 1 + report.PARALLEL_AXES
    assert labels[0] == "val_accuracy" and "lr" in labels


def test_plots_and_the_dashboard_name_the_metric(study, experiment, tmp_path):
    plots = report.write_plots(study, experiment, tmp_path)
    assert study.metric_names == ["val_accuracy"]
    for path in plots.values():
        html = open(path).read()
        assert "Objective Value" not in html and "Objective 0" not in html, path


def test_plots_do_not_embed_plotly_js(study, experiment, tmp_path):
    plots = report.write_plots(study, experiment, tmp_path)
    assert set(plots) == {"optimization_history", "param_importances", "parallel_coordinate"}
    for path in plots.values():
        html = open(path).read()
        assert len(html) < 200_000, (path, len(html))
        assert re.search(r'src="https://cdn\.plot\.ly/plotly-[0-9.]+\.min\.js"', html), path


def test_the_mlflow_link_opens_the_experiments_runs_in_the_model_training_view(experiment, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    experiment_id = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment(experiment.name)
    link = report.where_to_look(experiment)["mlflow"]
    assert link.startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}")
    assert link.endswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
