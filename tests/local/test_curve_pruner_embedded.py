"""The curve pruner through a real `kubetune run`: each train step rebuilds it from the spec and reports
every epoch to it against the shared study."""

from __future__ import annotations

import copy

import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _run, _study


def test_a_search_with_the_curve_pruner_records_every_trial(tmp_path):
    spec = copy.deepcopy(TINY)
    # One lane, so each trial meets the completed ones. Two curve families fit five points, and the last
    # epoch is never pruned, so with six epochs a trial is pruned after its fifth or not at all.
    spec["spec"]["strategy"]["pruner"] = {"name": "curve", "startupTrials": 1, "threshold": 0.1}
    spec["spec"]["budget"] = {"maxTrials": 4, "parallelTrials": 1, "trialsPerSegment": 4}
    spec["spec"]["trial"] = {"epochs": 6}
    spec_path = tmp_path / "curve.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    result = _run(spec_path, tmp_path / "home")

    assert result.returncode == 0, result.stdout + result.stderr
    trials = _study(tmp_path / "home").trials
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, [t.state for t in trials]
    assert trials[0].state == TrialState.COMPLETE  # nothing is pruned before startupTrials completed
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps, steps  # every epoch reported to the pruner
        assert len(steps) == (6 if trial.state == TrialState.COMPLETE else 5), (trial.state, steps)
