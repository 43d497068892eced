"""The evolution and rl samplers through a real `kubetune run`: kfp.local runs each suggest step as a fresh
process that rebuilds the sampler from the spec and the study."""

from __future__ import annotations

import copy

import pytest
import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _run, _study


@pytest.mark.parametrize(
    "sampler",
    [{"name": "evolution", "seed": 0, "population": 2, "tournament": 2}, {"name": "rl", "seed": 0}],
    ids=["evolution", "rl"],
)
def test_the_search_completes_its_trials(tmp_path, sampler):
    spec = copy.deepcopy(TINY)
    spec["spec"]["strategy"] = {"sampler": sampler}
    # One lane, so every trial is asked after the one before it completed.
    spec["spec"]["budget"] = {"maxTrials": 5, "parallelTrials": 1, "trialsPerSegment": 5}
    spec["spec"]["trial"] = {"epochs": 1}
    spec_path = tmp_path / "strategy.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    result = _run(spec_path, tmp_path / "home")

    assert result.returncode == 0, result.stdout + result.stderr
    trials = sorted(_study(tmp_path / "home").trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    parents = [t.user_attrs.get("parent_trial") for t in trials]
    if sampler["name"] == "evolution":  # the first two fill the population; every later one is a child
        assert parents[:2] == [None, None]
        assert all(parents[number] in range(number) for number in range(2, 5)), parents
    else:
        assert parents == [None] * 5
