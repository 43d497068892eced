"""kubetune run's stand-in interpreter: a KFP executor runs in a fork of the warm step server, anything else in
the real interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from test_steps import _server_pid

from kubetune.stepserver import serving

COMPONENT = """
def where():
    import os
    print("ran in", os.getpid(), "child of", os.getppid(), flush=True)
"""


def _executor(tmp_path, function: str = "where") -> list[str]:
    module = tmp_path / "component.py"
    module.write_text(COMPONENT)
    executor_input = {"inputs": {}, "outputs": {"outputFile": str(tmp_path / "output.json")}}
    return [
        "-m",
        "kfp.dsl.executor_main",
        "--component_module_path",
        str(module),
        "--function_to_execute",
        function,
        "--executor_input",
        json.dumps(executor_input),
    ]


def test_during_a_run_a_kfp_executor_runs_in_a_fork_of_the_step_server(tmp_path):
    real = sys.executable
    with serving(tmp_path / "server.log") as path:
        launcher, server = sys.executable, _server_pid(path)
        with subprocess.Popen(
            [launcher, *_executor(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as step:
            output, _ = step.communicate(timeout=120)
    assert sys.executable == real and launcher != real, "the real interpreter is back after the run"
    assert step.returncode == 0, output
    line = next(line for line in output.splitlines() if line.startswith("ran in"))
    pid, parent = int(line.split()[2]), int(line.split()[-1])
    # The launcher execs the shim in its own process; the executor ran in a fork of the server.
    assert parent == server and pid != step.pid
    assert "Wrote executor output file" in output  # KFP's executor ran to its end and logged to the step's output


def test_a_failing_executor_exits_with_its_code_and_its_traceback_in_the_log(tmp_path):
    with serving(tmp_path / "server.log"):
        step = subprocess.run(
            [sys.executable, *_executor(tmp_path, "missing")], capture_output=True, text=True, timeout=120
        )
    assert step.returncode == 1
    assert "AttributeError" in step.stdout + step.stderr


def test_anything_else_runs_in_the_real_interpreter(tmp_path):
    real = sys.executable
    with serving(tmp_path / "server.log"):
        other = subprocess.run(
            [sys.executable, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=60
        )
    assert other.returncode == 0 and other.stdout.strip() == real
