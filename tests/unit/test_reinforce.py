"""kubetune.reinforce: the policy moves towards rewarded choices, is rebuilt from the study alone, replays seeded."""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import create_trial
from synthetic_search import digits_score, seeded_search

from kubetune.reinforce import BASELINE_DECAY, Policy, ReinforceSampler, arm_of, arms, policy_from
from kubetune.samplers import make_sampler
from kubetune.spec import parse_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPTIMIZER = CategoricalDistribution(["adam", "sgd", "adamw"])
LR = FloatDistribution(1e-4, 1e-1, log=True)


def _rl(digits_spec: dict, seed: int):
    document = copy.deepcopy(digits_spec)
    document["spec"]["strategy"] = {"sampler": {"name": "rl", "seed": seed}}
    return parse_experiment(document)


def _trial(optimizer: str, lr: float = 1e-3):
    return create_trial(
        params={"optimizer": optimizer, "lr": lr}, distributions={"optimizer": OPTIMIZER, "lr": LR}, value=0.0
    )


def test_a_reward_above_the_baseline_moves_probability_to_the_choices_made():
    policy = Policy()
    policy.update(_trial("sgd"), 0.5)  # the first score only sets the baseline
    assert policy.baseline == 0.5 and np.allclose(policy.probabilities("optimizer", OPTIMIZER), 1 / 3)
    policy.update(_trial("adam", lr=0.05), 0.9)
    adam, sgd, adamw = policy.probabilities("optimizer", OPTIMIZER)
    assert adam > 1 / 3 > sgd == pytest.approx(adamw)
    assert policy.probabilities("lr", LR).argmax() == arm_of(LR, 0.05) == arms(LR) - 1
    assert policy.baseline == pytest.approx(BASELINE_DECAY * 0.5 + (1 - BASELINE_DECAY) * 0.9)
    before = policy.probabilities("optimizer", OPTIMIZER)
    policy.update(_trial("adam"), policy.baseline - 1.0)  # below the baseline: away from adam
    assert policy.probabilities("optimizer", OPTIMIZER)[0] < before[0]


def test_the_step_does_not_depend_on_the_objectives_units():
    small, large = Policy(), Policy()
    for policy, scale in ((small, 1.0), (large, 1000.0)):
        for optimizer, score in (("sgd", 0.5), ("adam", 0.9), ("sgd", 0.4), ("adamw", 0.7)):
            policy.update(_trial(optimizer), score * scale)
    assert np.allclose(small.probabilities("optimizer", OPTIMIZER), large.probabilities("optimizer", OPTIMIZER))


def test_numeric_parameters_have_an_arm_per_value_or_per_slice_of_the_range():
    assert arms(IntDistribution(1, 3)) == 3 and arm_of(IntDistribution(1, 3), 3) == 2
    assert arms(FloatDistribution(0.0, 0.3)) == 5 and arm_of(FloatDistribution(0.0, 0.3), 0.3) == 4
    assert arm_of(LR, 1e-4) == 0 and arm_of(LR, 1e-2) == 3  # log-scaled slices


def test_values_drawn_stay_in_their_distribution(digits_spec):
    experiment = _rl(digits_spec, seed=0)
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    study.optimize(lambda trial: digits_score(trial, experiment), n_trials=30)
    for trial in study.trials:
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            if isinstance(distribution, CategoricalDistribution):
                assert value in distribution.choices
            else:
                assert distribution.low <= value <= distribution.high
                assert isinstance(value, int) == isinstance(distribution, IntDistribution)


def test_the_policy_rebuilt_from_the_study_equals_the_incrementally_updated_one(digits_spec):
    experiment = _rl(digits_spec, seed=1)
    incremental = Policy()

    def update(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        incremental.update(trial, trial.value)  # maximized: the score is the value

    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    study.optimize(lambda trial: digits_score(trial, experiment), n_trials=25, callbacks=[update])
    rebuilt = policy_from(study)
    assert rebuilt.baseline == pytest.approx(incremental.baseline)
    assert rebuilt.logits.keys() == incremental.logits.keys()
    assert all(np.allclose(rebuilt.logits[name], incremental.logits[name]) for name in rebuilt.logits)


def test_a_search_learns_towards_better_choices(digits_spec):
    experiment = _rl(digits_spec, seed=2)
    study = optuna.create_study(storage=InMemoryStorage(), sampler=make_sampler(experiment), direction="maximize")
    study.optimize(lambda trial: digits_score(trial, experiment), n_trials=60)
    optimizer = study.trials[0].distributions["optimizer"]
    assert policy_from(study).probabilities("optimizer", optimizer).argmax() == optimizer.choices.index("adam")
    late = [t.params["optimizer"] for t in study.trials[30:]].count("adam")
    early = [t.params["optimizer"] for t in study.trials[:30]].count("adam")
    assert late > early


def test_a_seeded_search_gives_the_same_trials_twice_whichever_process_asks(digits_spec):
    experiment = _rl(digits_spec, seed=3)
    assert isinstance(make_sampler(experiment), ReinforceSampler)
    first = seeded_search(experiment, fresh_sampler_each_trial=False)
    assert first == seeded_search(experiment, fresh_sampler_each_trial=True)
    assert seeded_search(_rl(digits_spec, seed=4), fresh_sampler_each_trial=False) != first
