"""Regressions (issue 9, point 13): the search definition is fixed by the first result, not the first run, and a
refused change names the fields that changed."""

from __future__ import annotations

import copy

import pytest
from optuna.trial import TrialState, create_trial

from kubetune.spec import parse_experiment
from kubetune.storage import StudyError, open_storage
from kubetune.study import ensure_study

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


@pytest.fixture
def ensure(minimal_spec, tmp_path):
    """ensure_study of the minimal spec with ``changes`` applied to its spec sections, on one study database."""
    url = f"sqlite:///{tmp_path}/optuna.db"

    def run(**changes):
        document = copy.deepcopy(minimal_spec)
        for section, fields in changes.items():
            document["spec"].setdefault(section, {}).update(fields)
        experiment = parse_experiment(document)
        return ensure_study(experiment, storage=open_storage(experiment, url))

    return run


def test_a_first_run_that_failed_before_any_result_does_not_pin_the_search(ensure):
    study = ensure(data={"source": "file:///data/broken.csv"})  # retrieve-data failed: the lanes' trials failed
    study.add_trial(create_trial(state=TrialState.FAIL))
    fixed = ensure(data={"source": "file:///data/fixed.csv"})
    assert fixed.user_attrs["spec"]["spec"]["data"]["source"] == "file:///data/fixed.csv"
    fixed.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9))
    with pytest.raises(
        StudyError, match=r"spec\.data\.source \('file:///data/fixed.csv' -> 'file:///data/other.csv'\)"
    ):
        ensure(data={"source": "file:///data/other.csv"})


def test_a_refused_change_names_the_field_and_budget_changes_are_not_named(ensure):
    ensure().add_trial(create_trial(state=TrialState.COMPLETE, value=0.9))
    with pytest.raises(StudyError) as caught:
        ensure(trial={"epochs": 20}, budget={"maxTrials": 50})
    message = str(caught.value)
    assert "spec.trial.epochs (10 -> 20)" in message
    assert "maxTrials" not in message
    assert ensure(budget={"maxTrials": 50}).user_attrs["spec"]["spec"]["budget"]["maxTrials"] == 50


def test_a_recorded_spec_this_version_refuses_still_gives_the_refusal(ensure):
    study = ensure()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9))
    spec = study.user_attrs["spec"]
    spec["spec"]["budget"]["maxTrials"] = 0  # as if an older kubetune had accepted it
    study.set_user_attr("spec", spec)
    with pytest.raises(StudyError, match="different data, objective or search space: the spec it was last run with"):
        ensure(trial={"epochs": 20})
