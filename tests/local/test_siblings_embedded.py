"""strategy.seeds and strategy.baseline through a real `kubetune run`: every sibling study spends the whole
budget, with its own sampler and seed, and registers its own model; the main study records them all."""

from __future__ import annotations

import copy

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_embedded_run import TINY, _mlflow, _run


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    spec = copy.deepcopy(TINY)
    spec["spec"]["strategy"] = {"sampler": {"name": "tpe", "seed": 3}, "seeds": 2, "baseline": "random"}
    spec["spec"]["budget"] = {"maxTrials": 2, "parallelTrials": 2, "trialsPerSegment": 2}
    spec["spec"]["trial"] = {"epochs": 1}
    folder = tmp_path_factory.mktemp("siblings")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = _run(path, folder / "home")
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "home", result


NAMES = ["tiny-digits", "tiny-digits-seed-2", "tiny-digits-baseline-random", "tiny-digits-baseline-random-seed-2"]


def test_each_sibling_study_spends_the_budget_with_its_own_sampler_and_seed(repeated):
    home, result = repeated
    storage = f"sqlite:///{home / 'optuna.db'}"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == sorted(NAMES)
    samplers = {}
    for name in NAMES:
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, name
        strategy = study.user_attrs["spec"]["spec"]["strategy"]
        samplers[name] = (strategy["sampler"]["name"], strategy["sampler"]["seed"])
        assert f"kubetune: study {name}" in result.stdout
    assert samplers == {
        "tiny-digits": ("tpe", 3),
        "tiny-digits-seed-2": ("tpe", 4),
        "tiny-digits-baseline-random": ("random", 3),
        "tiny-digits-baseline-random-seed-2": ("random", 4),
    }
    main = optuna.load_study(study_name="tiny-digits", storage=storage)
    assert main.user_attrs["siblings"] == {"seeds": NAMES[:2], "baseline": NAMES[2:]}
    assert "compare them with `kubetune report tiny-digits`" in result.stdout


def test_every_sibling_registers_a_model_of_its_own_name(repeated):
    home, _ = repeated
    registered = {model.name for model in _mlflow(home).search_registered_models()}
    assert registered == {"tiny-digits-model", *NAMES[1:]}  # the spec's registry.modelName, then the siblings' names
