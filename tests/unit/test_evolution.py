"""kubetune.evolution: tournament, aging, one mutation per child, conditional parameters, seeded replay."""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.storages import InMemoryStorage
from synthetic_search import seeded_search

from kubetune.evolution import RegularizedEvolutionSampler
from kubetune.samplers import make_sampler
from kubetune.space import sample
from kubetune.spec import parse_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Parameters whose value decides whether others exist (space.sample and examples/digits.yaml).
CONDITIONING = {"optimizer", "arch.blocks", "arch.b0.kind", "arch.b1.kind", "arch.b2.kind"}


def _evolution(digits_spec: dict, seed: int):
    document = copy.deepcopy(digits_spec)
    document["spec"]["strategy"] = {"sampler": {"name": "evolution", "seed": seed, "population": 4, "tournament": 2}}
    return parse_experiment(document)


@pytest.fixture
def digits(digits_spec):
    return _evolution(digits_spec, seed=7)


def _study(sampler: optuna.samplers.BaseSampler, direction: str = "maximize") -> optuna.Study:
    return optuna.create_study(storage=InMemoryStorage(), sampler=sampler, direction=direction)


def _completed(study: optuna.Study, experiment, values: list[float]) -> None:
    """Trials of the real space (sampled by the study's sampler) completed with the given values."""
    for value in values:
        trial = study.ask()
        sample(trial, experiment.spec)
        study.tell(trial, value)


def _child(study: optuna.Study, experiment, *, seed: int, population: int, tournament: int):
    """A trial asked (and left running) by a fresh sampler, as each suggest step builds one; its parent's number."""
    sampler = RegularizedEvolutionSampler(population=population, tournament=tournament, seed=seed)
    study.sampler = sampler
    trial = study.ask()
    sample(trial, experiment.spec)
    return study.trials[trial.number], sampler.parent_of(trial.number)


def test_trials_are_random_until_the_population_has_completed(digits):
    study = _study(RegularizedEvolutionSampler(population=4, tournament=2, seed=0))
    running = [study.ask() for _ in range(4)]
    for trial in running:
        sample(trial, digits.spec)
    for trial in running[:3]:
        study.tell(trial, 0.5)
    _, parent = _child(study, digits, seed=0, population=4, tournament=2)
    assert parent is None  # three completed, one running: not yet a population
    study.tell(running[3], 0.5)
    _, parent = _child(study, digits, seed=0, population=4, tournament=2)
    assert parent in {t.number for t in running}


def test_a_child_differs_from_its_parent_in_exactly_one_parameter(digits):
    study = _study(optuna.samplers.RandomSampler(seed=1))
    _completed(study, digits, [0.1, 0.2, 0.3, 0.4, 0.5])
    mutated = set()
    for seed in range(60):
        child, parent_number = _child(study, digits, seed=seed, population=5, tournament=3)
        parent = study.trials[parent_number]
        shared = set(child.params) & set(parent.params)
        differing = {name for name in shared if child.params[name] != parent.params[name]}
        assert len(differing) == 1, (child.params, parent.params)
        if set(child.params) != set(parent.params):  # only a conditioning parameter adds or removes others
            assert differing <= CONDITIONING
        mutated |= differing
    assert {"lr", "arch.blocks", "optimizer"} <= mutated  # hyperparameters and architecture alike


def test_a_mutation_that_adds_a_block_or_enables_momentum_draws_the_new_parameters(digits):
    study = _study(RegularizedEvolutionSampler(population=2, tournament=2, seed=0))
    for _ in range(2):
        study.enqueue_trial({"arch.blocks": 1, "optimizer": "adam"})
    _completed(study, digits, [0.1, 0.2])
    grown = momentum = 0
    for seed in range(120):
        child, parent = _child(study, digits, seed=seed, population=2, tournament=2)
        assert parent == 1  # the better of the two
        if child.params["arch.blocks"] > 1:
            grown += 1
            assert {f"arch.b{i}.width" for i in range(child.params["arch.blocks"])} <= set(child.params)
        if child.params["optimizer"] == "sgd":
            momentum += 1
            assert 0.5 <= child.params["momentum"] <= 0.99
    assert grown and momentum


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_tournament_picks_the_best_of_the_members_it_draws(digits, direction):
    values = [0.3, 0.1, 0.5, 0.2, 0.4]
    study = _study(optuna.samplers.RandomSampler(seed=2), direction)
    _completed(study, digits, values)
    ranked = sorted(range(5), key=lambda n: values[n], reverse=direction == "maximize")  # best first
    _, parent = _child(study, digits, seed=0, population=5, tournament=5)
    assert parent == ranked[0]  # every member drawn: the best
    parents = {_child(study, digits, seed=seed, population=5, tournament=3)[1] for seed in range(40)}
    assert parents <= set(ranked[:3])  # the best of three drawn is never one of the two worst
    assert len(parents) > 1  # the draw is random, not always the best


def test_members_older_than_the_last_population_completed_age_out(digits):
    study = _study(optuna.samplers.RandomSampler(seed=3))
    _completed(study, digits, [0.9, 0.8, 0.1, 0.2, 0.3, 0.4])  # the best two are the oldest
    parents = {_child(study, digits, seed=seed, population=4, tournament=2)[1] for seed in range(40)}
    assert parents and parents <= {2, 3, 4, 5}


def test_parent_of_knows_only_the_trials_this_sampler_sampled(digits):
    sampler = RegularizedEvolutionSampler(population=2, tournament=2, seed=0)
    study = _study(sampler)
    _completed(study, digits, [0.1, 0.2, 0.3])
    assert [sampler.parent_of(n) for n in range(3)] == [None, None, 1]
    assert sampler.parent_of(99) is None


def test_make_sampler_builds_it_from_the_spec(digits):
    sampler = make_sampler(digits, seed_offset=3)
    assert isinstance(sampler, RegularizedEvolutionSampler)
    with pytest.raises(ValueError, match="tournament"):
        RegularizedEvolutionSampler(population=3, tournament=4)


def test_a_seeded_search_gives_the_same_trials_twice_whichever_process_asks(digits, digits_spec):
    first = seeded_search(digits, fresh_sampler_each_trial=False)
    assert first == seeded_search(digits, fresh_sampler_each_trial=True)
    assert seeded_search(_evolution(digits_spec, seed=8), fresh_sampler_each_trial=False) != first
