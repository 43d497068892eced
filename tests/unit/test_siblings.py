"""strategy.seeds and strategy.baseline: the sibling studies an experiment stands for, and their spec rules."""

from __future__ import annotations

import copy

import pytest
import yaml
from repo_paths import CELL_EXAMPLE, DIGITS

from kubetune.siblings import names, studies
from kubetune.spec import SpecError, parse_experiment


def _digits(**strategy):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["strategy"].update(strategy)
    return parse_experiment(data)


def test_without_seeds_or_baseline_the_experiment_is_its_only_study():
    experiment = _digits()
    assert [(s.role, s.repeat, s.experiment) for s in studies(experiment)] == [("search", 1, experiment)]


def test_seed_repeats_and_baselines_are_named_seeded_and_register_their_own_models():
    experiment = _digits(seeds=3, baseline="random", sampler={"name": "tpe", "seed": 7})
    found = studies(experiment)
    assert [(s.role, s.repeat, s.experiment.name) for s in found] == [
        ("search", 1, "digits-cnn"),
        ("search", 2, "digits-cnn-seed-2"),
        ("search", 3, "digits-cnn-seed-3"),
        ("baseline", 1, "digits-cnn-baseline-random"),
        ("baseline", 2, "digits-cnn-baseline-random-seed-2"),
        ("baseline", 3, "digits-cnn-baseline-random-seed-3"),
    ]
    assert [s.experiment.spec.strategy.sampler.seed for s in found] == [7, 8, 9, 7, 8, 9]
    assert [s.experiment.spec.strategy.sampler.name for s in found] == ["tpe"] * 3 + ["random"] * 3
    for sibling in found[1:]:
        spec = sibling.experiment.spec
        assert (spec.strategy.seeds, spec.strategy.baseline) == (1, "none"), "a sibling has no siblings"
        assert sibling.experiment.model_name == sibling.experiment.name != experiment.model_name
        assert sibling.experiment.metadata.labels == {"kubetune-sibling-of": "digits-cnn"}
        assert spec.strategy.pruner == experiment.spec.strategy.pruner
        assert (spec.data, spec.trial, spec.budget) == (
            experiment.spec.data,
            experiment.spec.trial,
            experiment.spec.budget,
        )
        assert sibling.experiment.search_space_fingerprint() == experiment.search_space_fingerprint()
    assert names(experiment) == {
        "seeds": ["digits-cnn", "digits-cnn-seed-2", "digits-cnn-seed-3"],
        "baseline": [
            "digits-cnn-baseline-random",
            "digits-cnn-baseline-random-seed-2",
            "digits-cnn-baseline-random-seed-3",
        ],
    }


def test_an_unseeded_search_stays_unseeded_in_every_repeat():
    found = studies(_digits(seeds=2, baseline="random", sampler={"name": "tpe", "seed": None}))
    assert [s.experiment.spec.strategy.sampler.seed for s in found] == [None] * 4


def test_the_baseline_drops_what_only_the_search_strategy_does():
    data = yaml.safe_load(CELL_EXAMPLE.read_text())
    data["spec"]["strategy"] = {
        "sampler": {"name": "tpe", "seed": 0},
        "oneShot": {"topK": 2},
        "warmStart": "meta",
        "baseline": "random",
    }
    baseline = studies(parse_experiment(data))[1].experiment
    assert baseline.spec.strategy.one_shot is None and baseline.spec.strategy.warm_start is None
    assert baseline.spec.strategy.sampler.name == "random"
    data["spec"]["strategy"] = {
        "sampler": {"name": "evolution", "population": 4, "tournament": 2},
        "inheritWeights": True,
        "baseline": "random",
    }
    baseline = studies(parse_experiment(data))[1].experiment
    assert not baseline.spec.strategy.inherit_weights and baseline.spec.strategy.sampler.population == 20


@pytest.mark.parametrize(
    "strategy, longest",
    [({"seeds": 12}, 63 - len("-seed-12")), ({"baseline": "random", "seeds": 2}, 63 - len("-baseline-random-seed-2"))],
)
def test_a_name_too_long_for_its_siblings_is_refused_with_the_limit(strategy, longest):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["strategy"].update(strategy)
    data["metadata"]["name"] = "a" * longest
    parse_experiment(copy.deepcopy(data))
    data["metadata"]["name"] = "a" * (longest + 1)
    with pytest.raises(SpecError) as error:
        parse_experiment(data)
    assert "metadata.name" in str(error.value) and f"at most {longest} characters" in str(error.value)


@pytest.mark.parametrize("strategy", [{"seeds": 0}, {"seeds": 21}, {"baseline": "tpe"}])
def test_bad_seeds_or_baseline_are_refused(strategy):
    with pytest.raises(SpecError) as error:
        _digits(**strategy)
    assert f"spec.strategy.{next(iter(strategy))}" in str(error.value)
