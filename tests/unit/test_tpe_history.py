"""strategy.sampler.history: TPE models the running trials, the last N finished ones and the best 25, no more."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from kubetune.samplers import make_sampler
from kubetune.spec import parse_experiment
from kubetune.tpe import GOOD_SET, TPESampler, window

SPACE = {"x": FloatDistribution(0.0, 1.0), "kind": CategoricalDistribution(["a", "b", "c"])}


def _filled(direction: str, finished: int, *, sampler=None, seed: int = 0) -> optuna.Study:
    """A study of ``finished`` complete, pruned and failed trials in random order, with two running ones among them."""
    rng = random.Random(seed)
    study = optuna.create_study(direction=direction, sampler=sampler)
    for number in range(finished):
        if number in (3, finished // 2):
            study.ask(SPACE)  # left running, numbered among the finished
        params = {"x": rng.random(), "kind": rng.choice("abc")}
        state = rng.choices([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL], [8, 1, 1])[0]
        value = rng.random() if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=SPACE))
    return study


def _expected(study: optuna.Study, history: int) -> list[int]:
    trials = study.get_trials(deepcopy=False)
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    finished = [t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(complete, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    return sorted(running | set(finished[-history:]) | {t.number for t in ranked[:GOOD_SET]})


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_window_holds_running_recent_and_the_best(direction):
    study = _filled(direction, 400)
    kept = window(study.get_trials(deepcopy=False), 50, study.direction)
    numbers = [t.number for t in kept]
    assert numbers == _expected(study, 50)
    best = sorted((t.value for t in study.trials if t.state == TrialState.COMPLETE), reverse=direction == "maximize")
    assert (
        sorted((t.value for t in kept if t.state == TrialState.COMPLETE), reverse=direction == "maximize")[:GOOD_SET]
        == best[:GOOD_SET]
    )
    assert sum(t.state == TrialState.RUNNING for t in kept) == 2
    assert not any(t.state == TrialState.FAIL for t in kept)
    assert 50 + 2 < len(kept) <= 50 + GOOD_SET + 2  # most of the best are older than the last 50


def test_a_window_past_the_study_is_the_study():
    study = _filled("maximize", 120)
    modelled = [t for t in study.trials if t.state != TrialState.FAIL]
    assert window(study.get_trials(deepcopy=False), 200, study.direction) == modelled


class _Recording(TPESampler):
    """kubetune's TPE, noting how many trials each Parzen estimator is built from."""

    def __init__(self, **kwargs) -> None:
        super().__init__(seed=0, n_startup_trials=10, multivariate=True, group=True, constant_liar=True, **kwargs)
        self.sizes: list[int] = []

    def _get_internal_repr(self, trials, search_space, study):
        self.sizes.append(len(trials))
        return super()._get_internal_repr(trials, search_space, study)


def _modelled_per_ask(history: int | None, finished: int = 600) -> list[int]:
    sampler = _Recording(history=history)
    study = _filled("minimize", finished, sampler=sampler)
    for _ in range(5):  # five more asks, each left running for the next one's constant liar
        study.ask(SPACE)
    return sampler.sizes


def test_what_an_ask_models_is_bounded_by_history():
    """The cost of an ask follows what it models: with history 50 that stays within running + 50 + 25."""
    bounded, unbounded = _modelled_per_ask(50), _modelled_per_ask(None)
    running = 2 + 5
    assert bounded and max(bounded) <= 50 + GOOD_SET + running
    assert max(unbounded) > 500  # without it every trial is modelled, so the bound above is the window's doing


def test_a_large_study_with_history_is_not_sent_back_to_random_sampling():
    """TPE samples at random below n_startup_trials; the window must not count the study below that."""
    sampler = _Recording(history=50)
    study = _filled("minimize", 300, sampler=sampler)
    study.ask(SPACE)
    assert sampler.sizes, "the ask went through TPE's model, not its random start-up"


def test_history_below_the_startup_trials_is_refused():
    with pytest.raises(ValueError, match=r"history \(5\) must be at least n_startup_trials \(10\)"):
        TPESampler(history=5, n_startup_trials=10)


def test_a_window_holding_the_whole_study_suggests_what_no_window_does():
    """The window changes what TPE reads, never how it samples."""
    suggestions = []
    for history in (None, 1_000):
        study = _filled("maximize", 150, sampler=TPESampler(history=history, seed=3, multivariate=True, group=True))
        suggestions.append([study.ask(SPACE).params for _ in range(5)])
    assert suggestions[0] == suggestions[1]


def test_the_spec_passes_history_to_tpe_and_leaves_it_unset_by_default(digits_spec):
    assert make_sampler(parse_experiment(digits_spec)).history is None
    digits_spec["spec"]["strategy"]["sampler"] = {"name": "tpe", "history": 300}
    assert make_sampler(parse_experiment(digits_spec)).history == 300


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_window_kept_across_asks_matches_a_fresh_one_while_trials_finish_out_of_order(direction):
    """The suggest service's sampler asks many times: what it remembers must never change the window."""
    from kubetune.tpe import _Window

    rng = random.Random(7)
    study = _filled(direction, 80, seed=7)
    kept = _Window(30)
    open_trials = [study.ask(SPACE) for _ in range(6)]
    for step in range(60):
        if open_trials and rng.random() < 0.6:  # finish a random open trial, not the oldest
            trial = open_trials.pop(rng.randrange(len(open_trials)))
            study.tell(trial, rng.random()) if rng.random() < 0.8 else study.tell(trial, state=TrialState.PRUNED)
        else:
            study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE, value=rng.random(), params={"x": 0.5, "kind": "a"}, distributions=SPACE
                )
            )
        if step % 7 == 0:
            open_trials.append(study.ask(SPACE))
        trials = study.get_trials(deepcopy=False)
        assert [t.number for t in kept.of(trials, study.direction)] == _expected(study, 30)
