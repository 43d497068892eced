"""Every sampler the spec admits builds and suggests on a real space with numeric and conditional dimensions."""

from __future__ import annotations

import optuna
import pytest

from kubetune import space
from kubetune.samplers import make_sampler
from kubetune.spec import SAMPLERS, parse_experiment


# grid needs a finite space (test_space); darts a cell space and its derived cells (test_one_shot)
@pytest.mark.parametrize("name", [s for s in SAMPLERS if s not in ("grid", "darts")])
def test_each_sampler_suggests_past_its_startup_trials(digits_spec, name):
    digits_spec["spec"]["strategy"] = {"sampler": {"name": name, "seed": 0}}
    digits_spec["spec"]["budget"]["maxTrials"] = 12
    experiment = parse_experiment(digits_spec)
    study = optuna.create_study(sampler=make_sampler(experiment), direction="maximize")
    for _ in range(12):  # past every sampler's random start-up (at most 10 here)
        trial = study.ask()
        chosen, architecture = space.sample(trial, experiment.spec)
        assert architecture is not None and 1e-4 <= chosen["lr"] <= 3e-2
        study.tell(trial, chosen["lr"] * len(architecture["blocks"]))
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
