"""Ordinary environment problems (a full disk, a read-only home, a home that does not exist) end in one
line and exit code 2, not a traceback; kubetune's own bugs keep theirs (exit 1)."""

from __future__ import annotations

import errno
import os
import pathlib

import pytest
import sqlalchemy
import yaml
from click.testing import CliRunner

from kubetune import local
from kubetune.cli import cli, environment_problem


@pytest.fixture
def spec_file(tmp_path, minimal_spec):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(minimal_spec))
    return str(path)


@pytest.fixture(autouse=True)
def embedded(monkeypatch):
    """The embedded stores, with KUBETUNE_HOME restored after the CLI sets it."""
    monkeypatch.setenv("KUBETUNE_HOME", os.environ.get("KUBETUNE_HOME", ".kubetune"))
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_status_with_a_home_that_does_not_exist_says_so_and_creates_nothing(tmp_path):
    home = tmp_path / "no" / "such-home"
    line = _one_error_line(CliRunner().invoke(cli, ["status", "digits-cnn", "--home", str(home)]))
    assert f"kubetune home {home} does not exist" in line and "--home" in line
    assert not (tmp_path / "no").exists()


def test_status_with_an_empty_home_does_not_create_a_study_file(tmp_path):
    line = _one_error_line(CliRunner().invoke(cli, ["status", "digits-cnn", "--home", str(tmp_path)]))
    assert "has no study database optuna.db" in line
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_home_is_one_line_naming_it(tmp_path, spec_file, monkeypatch):
    home = tmp_path / "home"
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):  # the file system refuses, as a read-only mount does (root ignores modes)
        if str(self).startswith(str(home)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    line = _one_error_line(CliRunner().invoke(cli, ["run", spec_file, "--home", str(home)]))
    assert f"cannot write {home}" in line and "Read-only file system" in line and "--home" in line


def test_a_full_disk_during_a_run_is_one_line(tmp_path, spec_file, monkeypatch):
    def full_disk(experiment, *, report, verbose):  # kfp.local's log write fails like this, with no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(local, "run_experiment", full_disk)
    line = _one_error_line(CliRunner().invoke(cli, ["run", spec_file, "--home", str(tmp_path)]))
    assert "no space left on the disk" in line and str(tmp_path) in line and "trials recorded so far are kept" in line


def test_sqlite_errors_for_the_same_problems_are_recognised(tmp_path):
    path = tmp_path / "study.db"
    sqlalchemy.create_engine(f"sqlite:///{path}").connect().close()
    read_only = sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with read_only.connect() as connection, pytest.raises(sqlalchemy.exc.OperationalError) as raised:
        connection.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))
    assert environment_problem(raised.value).startswith("cannot write")
    missing = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'gone' / 'study.db'}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
        missing.connect()
    assert environment_problem(raised.value).startswith("cannot write")


def test_a_bug_in_kubetune_keeps_its_traceback_and_exits_1(spec_file, tmp_path, monkeypatch):
    def bug(experiment, *, report, verbose):
        raise KeyError("internal")

    monkeypatch.setattr(local, "run_experiment", bug)
    result = CliRunner().invoke(cli, ["run", spec_file, "--home", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert environment_problem(OSError(errno.ECONNREFUSED, "refused")) is None
