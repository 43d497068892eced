"""kubetune.diagram: a PNG of each kind of architecture; the champion's is among the experiment's plots."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from kubetune import report
from kubetune.diagram import draw
from kubetune.spec import parse_experiment

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PNG = b"\x89PNG\r\n\x1a\n"
ARCHITECTURES = {
    "cell": {
        "type": "cell",
        "nodes": 4,
        "edges": [["conv3"], ["skip", "avgpool"], ["zero", "conv1", "linear"], ["zero", "zero", "zero", "zero"]],
        "cells": 3,
        "width": 16,
        "reductions": 2,
    },
    "macro": {"blocks": [{"kind": "conv", "width": 16, "kernelSize": 5, "skip": True}, {"kind": "mlp", "width": 8}]},
    "one-block": {"blocks": [{"kind": "mlp", "width": 8}]},
}


@pytest.mark.parametrize("architecture", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_a_png_is_drawn(tmp_path, architecture):
    path = draw(architecture, tmp_path / "architecture.png")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000  # an image with something on it, not an empty canvas


def test_the_champions_diagram_is_among_the_plots(tmp_path, minimal_spec):
    experiment = parse_experiment(minimal_spec)
    study = optuna.create_study(direction="maximize")
    for value, kind in ((0.5, "macro"), (0.9, "cell")):
        trial = create_trial(
            params={"lr": value},
            distributions={"lr": FloatDistribution(0, 1)},
            value=value,
            user_attrs={"architecture": ARCHITECTURES[kind]},
        )
        study.add_trial(trial)
    written = report.write_plots(study, experiment, tmp_path)
    champion = tmp_path / "champion_architecture.png"
    assert written["champion_architecture"] == str(champion) and champion.read_bytes().startswith(PNG)
    assert report.summarize(study, experiment)["best_architecture_code"].startswith("cell:n4:c3:w16:r2:")


def test_no_champion_diagram_without_an_architecture(tmp_path, minimal_spec):
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(params={"lr": 0.1}, distributions={"lr": FloatDistribution(0, 1)}, value=0.1))
    assert "champion_architecture" not in report.write_plots(study, parse_experiment(minimal_spec), tmp_path)
