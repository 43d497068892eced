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
