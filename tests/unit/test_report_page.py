"""The reproducibility report: facts read from a real SQLite study, a self-contained page, the CLI and MLflow."""

from __future__ import annotations

import base64
import datetime as dt
from html.parser import HTMLParser

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from kubetune import report_facts, tracking
from kubetune.cli import cli
from kubetune.report_page import render
from kubetune.spec import parse_experiment
from kubetune.study import ensure_study

NAME = "unit-test"
T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
HARDWARE = {"device": "cpu", "device_name": "x86_64", "cpu_count": 2, "torch_threads": 2, "platform": "Linux-6.1"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBETUNE_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "home").mkdir()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return tmp_path / "home"


@pytest.fixture
def experiment(minimal_spec):
    minimal_spec["spec"]["parameters"] = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    minimal_spec["spec"]["strategy"] = {"sampler": {"name": "tpe", "seed": 7}}
    minimal_spec["spec"]["trial"] = {"epochs": 3, "batchSize": 32}
    return parse_experiment(minimal_spec)


def _local(moment: dt.datetime) -> dt.datetime:
    """Optuna stores naive local times."""
    return moment.astimezone().replace(tzinfo=None)


def _add(study: optuna.Study, values: list[float], *, hardware: dict | None = None, minutes: float = 1.0) -> None:
    """Completed trials, one every ``minutes`` from T0 + 1 min, each 3 s of training and val/test metrics."""
    for number, value in enumerate(values):
        end = T0 + dt.timedelta(minutes=minutes * (number + 1))
        attrs = {
            "train_seconds": 3.0,
            "metrics": {"val_accuracy": value, "val_loss": 1 - value, "test_accuracy": value - 0.01 * number},
        }
        if hardware is not None:
            attrs["hardware"] = hardware
        study.add_trial(
            FrozenTrial(
                number=number,
                state=TrialState.COMPLETE,
                value=value,
                datetime_start=_local(end - dt.timedelta(seconds=5)),
                datetime_complete=_local(end),
                params={},
                distributions={},
                user_attrs=attrs,
                system_attrs={},
                intermediate_values={},
                trial_id=number,
            )
        )


def _study(experiment, values, name=NAME, **kwargs) -> optuna.Study:
    named = parse_experiment({**experiment.to_dict(), "metadata": {"name": name}})
    study = ensure_study(named)
    study.set_user_attr("started_at", T0.isoformat())
    _add(study, values, **kwargs)
    return study


def test_the_facts_are_the_recorded_ones(home, experiment):
    study = _study(experiment, [0.5, 0.7, 0.6], hardware=HARDWARE)
    study.set_user_attr("data_profile", {"rows": 1797, "features": 64, "classes": 10})
    facts = report_facts.gather(NAME)
    assert facts["search_space"]["fingerprint"] == experiment.search_space_fingerprint()
    assert facts["search_space"]["fingerprint_matches_spec"] is True
    assert facts["versions"] == study.user_attrs["versions"] and "optuna" in facts["versions"]
    assert facts["hardware"] == [{"hardware": HARDWARE, "trials": 3}]
    assert facts["seeds"] == {
        "sampler": 7,
        "data": 0,
        "per_trial_rule": "sampler seed + trial number",
        "champion_trial_seed": 8,
    }
    assert facts["training"]["searched_hyperparameters"] == ["lr"]
    assert facts["training"]["fixed_hyperparameters"]["batchSize"] == 32  # trial.batchSize, not the trainer default
    assert "lr" not in facts["training"]["fixed_hyperparameters"]
    assert facts["data"]["profile"]["rows"] == 1797
    assert facts["timing"]["end_to_end_seconds"] == pytest.approx(180.0)  # T0 to the third trial's end
    assert facts["timing"]["train_seconds_sum"] == pytest.approx(9.0)
    assert [p["best"] for p in facts["curve"]] == [0.5, 0.7, 0.7]
    assert [p["minutes"] for p in facts["curve"]] == pytest.approx([1.0, 2.0, 3.0])
    evaluation = facts["evaluation"]
    assert evaluation["champion_trial"] == 1 and evaluation["selection_metrics"] == ["val_accuracy"]
    assert evaluation["champion_test"] == {"test_accuracy": pytest.approx(0.69)}  # trial 1's, no other trial's


def test_without_hardware_or_baseline_the_facts_say_so(home, experiment):
    _study(experiment, [0.5, 0.6])
    facts = report_facts.gather(NAME)
    assert facts["hardware"] == [{"hardware": None, "trials": 2}]
    assert facts["data"]["profile"] is None
    comparison = facts["comparison"]
    assert comparison["baseline"]["runs"] == [] and comparison["baseline_hint"] == report_facts.BASELINE_HINT
    assert [r["study"] for r in comparison["seeds"]["runs"]] == [NAME]


def test_siblings_named_by_the_study_give_the_spread_over_seeds(home, experiment):
    main = _study(experiment, [0.5, 0.6, 0.9])
    _study(experiment, [0.7, 0.7, 0.8], name=f"{NAME}-seed-2")
    _study(experiment, [0.1, 0.2], name=f"{NAME}-seed-3")
    _study(experiment, [0.4, 0.5, 0.5], name=f"{NAME}-baseline-random")
    main.set_user_attr(
        "siblings",
        {"seeds": [NAME, f"{NAME}-seed-2", f"{NAME}-seed-3"], "baseline": [f"{NAME}-baseline-random", "gone"]},
    )
    facts = report_facts.gather(NAME)
    comparison = facts["comparison"]
    assert comparison["baseline_hint"] is None
    assert comparison["baseline"]["missing"] == ["gone"]  # listed, never filled in
    assert [r["best"] for r in comparison["baseline"]["runs"]] == [0.5]
    spread = comparison["seeds"]["spread"]
    assert spread[0] == {"index": 1, "min": 0.1, "median": 0.5, "max": 0.7, "runs": 3}
    assert spread[2] == {"index": 3, "min": 0.8, "median": pytest.approx(0.85), "max": 0.9, "runs": 2}
    _, text = _parse(render(facts))
    assert "Search over 3 runs, best after 2 completed trials: median 0.6, min 0.2, max 0.7." in text
    assert "strategy.baseline: random" not in text and "Named but not in the study database: gone." in text


def test_without_the_attribute_siblings_are_found_by_their_names(home, experiment):
    main = _study(experiment, [0.5])
    names = [NAME, f"{NAME}-seed-10", f"{NAME}-seed-2", f"{NAME}-seed-2b", f"{NAME}-baseline-random-seed-2"]
    names += [f"{NAME}-baseline-random", "other-baseline-random", f"{NAME}-baseline-randomly"]
    assert report_facts.sibling_names(main, names) == {
        "seeds": [NAME, f"{NAME}-seed-2", f"{NAME}-seed-10"],
        "baseline": [f"{NAME}-baseline-random", f"{NAME}-baseline-random-seed-2"],
    }


def test_best_so_far_follows_the_direction(home, minimal_spec):
    minimal_spec["spec"]["objective"] = {"metric": "val_loss"}
    study = _study(parse_experiment(minimal_spec), [0.4, 0.6, 0.3])
    assert [p["best"] for p in report_facts.best_so_far(study)] == [0.4, 0.4, 0.3]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if tag == "img":
            self.images.append(found["src"])
        self.links += [found[key] for key in ("href",) if key in found]
        assert tag not in ("script", "link", "iframe"), f"the page must be self-contained, found <{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> tuple[_Page, str]:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser, " ".join(" ".join(parser.text).split())


def test_the_page_holds_the_facts_and_its_plots_inline(home, experiment):
    _study(experiment, [0.5, 0.7, 0.6], hardware=HARDWARE)
    facts = report_facts.gather(NAME)
    parser, text = _parse(render(facts))
    assert experiment.search_space_fingerprint() in text
    assert f"optuna {facts['versions']['optuna']}" in text and "package version python" in text
    assert "device_name: x86_64" in text and "not recorded" not in text.split("Seeds")[0].split("Hardware")[1]
    assert "sampler seed + trial number" in text and "Champion: trial 1." in text
    assert "3.0 min (180 s)" in text  # end to end, T0 to the last trial
    assert "strategy.baseline: random" in text
    assert parser.links == []
    assert len(parser.images) == 3
    for source in parser.images:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix) :]).startswith(b"\x89PNG")


def test_the_page_says_not_recorded_and_escapes_what_it_shows(home, experiment):
    study = _study(experiment, [0.5])
    study.set_user_attr("data_profile", {"source": "<b>evil</b>"})
    page = render(report_facts.gather(NAME))
    _, text = _parse(page)
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert (
        "Hardware Checklist: Control confounders: hardware hardware of the trial finished trials not recorded 1" in text
    )


def test_cli_writes_the_page_and_logs_it_on_the_parent_run(home, experiment, tmp_path):
    study = _study(experiment, [0.5, 0.6])
    parent = tracking.ensure_parent_run(experiment)
    study.set_user_attr("mlflow_parent_run_id", parent)
    result = CliRunner().invoke(cli, ["report", NAME, "--home", str(home), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "out" / f"{NAME}.html"
    assert experiment.search_space_fingerprint() in page.read_text()
    assert f"report/{NAME}.html" in result.output and parent in result.output
    artifacts = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").list_artifacts(parent, "report")
    assert [a.path for a in artifacts] == [f"report/{NAME}.html"]


def test_cli_unknown_experiment_exits_2_with_one_line(home, experiment, tmp_path):
    _study(experiment, [0.5])
    result = CliRunner().invoke(cli, ["report", "no-such", "--home", str(home), "-o", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no experiment 'no-such'" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "no-such.html").exists()


def test_a_study_without_completed_trials_gets_a_page_without_plots(home, minimal_spec, recwarn):
    minimal_spec["spec"]["objective"] = [{"metric": "val_accuracy"}, {"metric": "params"}]
    study = ensure_study(parse_experiment({**minimal_spec, "metadata": {"name": NAME}}))
    study.tell(study.ask(), state=TrialState.FAIL)
    parser, text = _parse(render(report_facts.gather(NAME)))
    assert parser.images == []
    assert text.count("No trial has completed yet.") == 2 and "No champion yet." in text
    assert not [w for w in recwarn if "matplotlib" in str(w.filename)]
