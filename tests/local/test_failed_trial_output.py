"""`kubetune run` names the trial whose step failed and the error the step ended with, not only "a pipeline
step failed", and that trial is failed, not left RUNNING."""

import optuna
import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _run


def test_a_trial_that_fails_inside_a_step_is_named_with_its_reason(tmp_path, monkeypatch):
    path = tmp_path / "failing.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "metadata": {"name": "failing-trial"},
                "spec": {**TINY["spec"], "budget": {"maxTrials": 1, "parallelTrials": 1, "trialsPerSegment": 1}},
            }
        )
    )
    # The train step reads its thread count from this variable: int() of it fails inside the step, after
    # the suggest step created the trial.
    monkeypatch.setenv("KUBETUNE_TRAIN_THREADS", "not-a-number")
    result = _run(path, tmp_path / "home")
    assert result.returncode == 1, result.stderr
    assert (
        "step 'train-trial' of trial 0 ended with ValueError: invalid literal for int() with base 10: 'not-a-number'"
    ) in result.stderr
    assert "see the step's log in" in result.stderr and "Traceback" not in result.stderr
    study = optuna.load_study(study_name="failing-trial", storage=f"sqlite:///{tmp_path / 'home' / 'optuna.db'}")
    assert [trial.state for trial in study.trials] == [TrialState.FAIL]


def test_a_user_mistake_found_inside_a_step_exits_2_with_its_message(tmp_path):
    """The data file is read by the retrieve-data step, in the step server: its DataError reaches the runner
    as data and ends `kubetune run` like any user mistake, with one line and exit code 2."""
    path = tmp_path / "missing-data.yaml"
    missing = tmp_path / "nowhere" / "digits.npz"
    path.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "metadata": {"name": "missing-data"},
                "spec": {**TINY["spec"], "data": {"source": f"file://{missing}"}},
            }
        )
    )
    result = _run(path, tmp_path / "home")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error: ") and f"file {missing} does not exist" in line
