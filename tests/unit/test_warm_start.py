"""strategy.warmStart's step against a real SQLite study database and MLflow store."""

import math

from optuna.trial import TrialState
from test_meta import _fill
from test_search import _experiment, home  # noqa: F401 - home is a fixture

from kubetune import meta, meta_store, settings
from kubetune.search import suggest_trial
from kubetune.segments import start_segment
from kubetune.spec import parse_experiment
from kubetune.study import get_trial, load_study
from kubetune.warm_start import WARM_START_ATTR, warm_start


def _warm(name="warm", **warm):
    data = _experiment(name).to_dict()
    data["spec"]["strategy"]["warmStart"] = warm or "meta"
    return parse_experiment(data)


def test_without_a_meta_model_nothing_is_enqueued_and_the_study_says_why(home):  # noqa: F811
    experiment = _warm()
    start_segment(experiment, segment=0)
    summary = warm_start(experiment, split_path=str(home / "split.npz"))
    assert summary["enqueued"] == [] and "no kubetune-meta model is registered" in summary["message"]
    study = load_study(experiment)
    assert study.user_attrs[WARM_START_ATTR] == summary and study.trials == []


def test_the_best_scored_candidates_become_the_first_trials_and_name_the_model(home, capsys):  # noqa: F811
    for index in range(2):
        _fill(settings.storage_url(), f"past-{index}", trials=12, seed=index)
    version = meta_store.register(meta.fit(meta.collect(settings.storage_url())))
    experiment = _warm(trials=2, candidates=50)
    start_segment(experiment, segment=0)
    summary = warm_start(experiment, split_path=str(home / "split.npz"))
    assert f"enqueued the best 2 of 50 candidates scored by kubetune-meta/{version}" in capsys.readouterr().out
    assert [entry["rank"] for entry in summary["enqueued"]] == [1, 2]
    assert summary["enqueued"][0]["score"] >= summary["enqueued"][1]["score"]
    study = load_study(experiment)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["warm_start"] for t in waiting] == [f"kubetune-meta/{version}"] * 2
    # The past studies were best at lr 10^-2.5; this space's lr spans 1e-3 to 1e-2, so its picks lie near there.
    assert all(abs(math.log10(entry["params"]["lr"]) + 2.5) < 0.45 for entry in summary["enqueued"]), summary
    # A lane takes the first enqueued configuration as its trial; a second warm start enqueues nothing more.
    number = suggest_trial(experiment, segment=0, slot=0)
    first = get_trial(load_study(experiment), number)
    assert first.params == summary["enqueued"][0]["params"] and first.user_attrs["suggested_by"]["rank"] == 1
    assert warm_start(experiment, split_path=str(home / "split.npz")) == summary
    assert len(load_study(experiment).get_trials(states=(TrialState.WAITING,))) == 1
