"""Everything an embedded run writes lives under its home: the working directory it started in can go."""

import os
import shutil
import subprocess
import sys

import yaml
from test_embedded_run import TINY

LOAD_CHAMPION = """
import mlflow.pytorch, torch
model = mlflow.pytorch.load_model("models:/tiny-digits-model@champion")
print(tuple(model(torch.zeros((2, 1, 8, 8))).shape))
"""


def test_the_champion_loads_after_the_starting_directory_is_removed(tmp_path):
    spec_path, home, started_in = tmp_path / "tiny.yaml", tmp_path / "home", tmp_path / "started-here"
    spec_path.write_text(
        yaml.safe_dump(
            {**TINY, "spec": {**TINY["spec"], "budget": {"maxTrials": 2, "parallelTrials": 2, "trialsPerSegment": 2}}}
        )
    )
    started_in.mkdir()
    env = {**os.environ, "KUBETUNE_HOME": str(home)}
    env.pop("KUBETUNE_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", str(spec_path)],
        cwd=started_in,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(path.name for path in started_in.iterdir()) == []
    shutil.rmtree(started_in)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_CHAMPION],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"},
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "(2, 10)"
