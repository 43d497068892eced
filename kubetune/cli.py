"""The `kubetune` command: thin commands over library calls; heavy imports stay inside the commands.

A user mistake (bad spec, missing data, unreachable database or MLflow) prints one message and exits
with code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kubetune.errors import UserError

__all__ = ["main", "cli"]


class UsageProblem(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class Group(click.Group):
    """Turns every UserError raised by a command into exit code 2 with its message."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise UsageProblem(str(error)) from None


def _load(path: str):
    from kubetune.spec import load_experiment

    return load_experiment(path)


experiment_argument = click.argument("experiment_file", metavar="EXPERIMENT.yaml", type=click.Path(dir_okay=False))
home_option = click.option(
    "--home",
    envvar="KUBETUNE_HOME",
    type=click.Path(file_okay=False),
    help="Embedded state directory (Optuna SQLite file, MLflow store, logs). Env: KUBETUNE_HOME. Default: ./.kubetune",
)


def _set_home(home: str | None) -> None:
    import os

    if home:
        os.environ["KUBETUNE_HOME"] = home


@click.group(cls=Group)
@click.version_option(package_name="kubetune")
def cli() -> None:
    """Hyperparameter and architecture search for PyTorch on Kubeflow Pipelines."""


@cli.command()
@experiment_argument
def validate(experiment_file: str) -> None:
    """Check an experiment spec and print it with every default filled in."""
    import yaml

    experiment = _load(experiment_file)
    click.echo(yaml.safe_dump(experiment.to_dict(), sort_keys=False))


@cli.command()
@experiment_argument
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Pipeline YAML to write (default: NAME.pipeline.yaml).")
@click.option("--image", envvar="KUBETUNE_IMAGE", help="Runtime image of the steps. Env: KUBETUNE_IMAGE.")
@click.option("--trainer-image", envvar="KUBETUNE_TRAINER_IMAGE", help="Image of GPU trial pods. Env: KUBETUNE_TRAINER_IMAGE.")
@click.option("--secret", default="kubetune-credentials", show_default=True,
              help="Kubernetes Secret holding KUBETUNE_STORAGE and the S3 keys, injected as environment variables.")
@click.option("--config-map", default="kubetune-config", show_default=True,
              help="ConfigMap holding MLFLOW_TRACKING_URI and the S3 endpoint.")
@click.option("--image-pull-secret", "image_pull_secrets", multiple=True, help="Image pull Secret for every step (repeatable).")
def compile(experiment_file: str, output: str | None, image, trainer_image, secret, config_map, image_pull_secrets) -> None:
    """Write the KFP pipeline YAML to upload in the Kubeflow UI."""
    from kubetune.pipelines import ClusterSettings, compile_pipeline

    experiment = _load(experiment_file)
    overrides = {k: v for k, v in {"image": image, "trainer_image": trainer_image}.items() if v}
    cluster = ClusterSettings(secret=secret, config_map=config_map, image_pull_secrets=tuple(image_pull_secrets), **overrides)
    path = compile_pipeline(experiment, output or f"{experiment.name}.pipeline.yaml", cluster)
    click.echo(f"wrote {path}: upload it in the Kubeflow UI (Pipelines > Upload pipeline), then Create run.")


@cli.command()
@experiment_argument
@home_option
@click.option("--verbose", is_flag=True, help="Show every step's log instead of the progress bar.")
def run(experiment_file: str, home: str | None, verbose: bool) -> None:
    """Run the search on this machine (kfp.local); re-running resumes it."""
    _set_home(home)
    experiment = _load(experiment_file)
    from kubetune.console import run_with_progress

    run_with_progress(experiment, verbose=verbose)


@cli.command("dev-stack")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Keep the servers' data here (reused next time). Default: a temporary directory.")
def dev_stack(directory: str | None) -> None:
    """Start PostgreSQL, an S3 server and an MLflow server locally; print the variables to export."""
    from kubetune.devstack import ServiceError, run_dev_stack

    try:
        run_dev_stack(directory, echo=click.echo)
    except ServiceError as error:
        raise UsageProblem(str(error)) from None


def main() -> None:
    cli(prog_name="kubetune")


if __name__ == "__main__":
    sys.exit(main())
