"""Weight inheritance through kfp.local: evolution's children start from their parents' stored weights."""

import copy

import yaml
from test_embedded_run import TINY, _run, _study


def test_an_evolved_child_inherits_its_parents_weights(tmp_path):
    spec = copy.deepcopy(TINY)
    # Two random members, then two children; one lane, so each child's parents have finished.
    spec["spec"].update(
        strategy={
            "sampler": {"name": "evolution", "seed": 0, "population": 2, "tournament": 2},
            "inheritWeights": True,
        },
        budget={"maxTrials": 4, "parallelTrials": 1, "trialsPerSegment": 4},
        trial={"epochs": 1},
    )
    (tmp_path / "evolution.yaml").write_text(yaml.safe_dump(spec))

    result = _run(tmp_path / "evolution.yaml", tmp_path / "home")

    assert result.returncode == 0, result.stdout + result.stderr
    children = [t for t in _study(tmp_path / "home").trials if "parent_trial" in t.user_attrs]
    assert len(children) == 2, "the two trials after the population of two are children"
    # No pruner and one lane: every parent completed and stored its weights, so every child inherits.
    for child in children:
        assert child.user_attrs.get("inherited") is True, child.user_attrs.get("inheritance")
        summary = child.user_attrs["inheritance"]
        assert summary["parent"] == child.user_attrs["parent_trial"]
        assert summary["copied"] + summary["sliced"] > 0
