"""Regression (issue 9, point 12) through kfp.local: a stop rule that holds mid-segment starts no more trials."""

import copy

import yaml
from test_embedded_run import TINY, _run, _study


def test_a_target_reached_by_the_first_trial_ends_the_segment_there(tmp_path):
    spec = copy.deepcopy(TINY)
    spec["spec"]["budget"] = {"maxTrials": 4, "parallelTrials": 1, "trialsPerSegment": 4, "targetValue": 0.0}
    spec_path = tmp_path / "target.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    result = _run(spec_path, tmp_path / "home")

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_study(tmp_path / "home").trials) == 1, "the lanes after the first trial trained nothing"
    assert "targetValue 0.0 reached" in result.stdout
