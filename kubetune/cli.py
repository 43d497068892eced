"""The `kubetune` command: thin commands over library calls; heavy imports stay inside the commands.

A user mistake (bad spec, missing data, unreachable database or MLflow) prints one message and exits
with code 2, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os

import click

from kubetune.errors import UserError

__all__ = ["cli", "main"]


class UsageProblem(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class Group(click.Group):
    """Turns every UserError, and a full disk or an unwritable directory, into exit code 2 with one line.

    Anything else is a bug in kubetune: its traceback is kept (exit 1).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise UsageProblem(str(error)) from None
        except Exception as error:
            problem = environment_problem(error)
            if problem is None:
                raise
            raise UsageProblem(problem) from None


DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
# What SQLite says (through sqlalchemy) for the same problems, which carry no errno.
SQLITE_ERRNOS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "unable to open database file": errno.EACCES,
}


def environment_problem(error: BaseException) -> str | None:
    """One line for a full disk or a path kubetune may not write, saying how to fix it; None otherwise."""
    code, path = _errno_and_path(error)
    if code not in DISK_FULL | NOT_WRITABLE:
        return None
    from kubetune import settings

    where = path or f"a file under the kubetune home {settings.home()}"
    if code in DISK_FULL:
        return (
            f"no space left on the disk while writing {where}: free some space, or move the state with --home "
            "or KUBETUNE_HOME, then run the same command again (the trials recorded so far are kept)"
        )
    return (
        f"cannot write {where} ({os.strerror(code)}): pick a writable directory with --home or KUBETUNE_HOME, "
        "or fix its permissions (the trials recorded so far are kept)"
    )


def _errno_and_path(error: BaseException) -> tuple[int | None, str | None]:
    """The errno and file name of an OSError, or the errno a SQLite error message stands for."""
    if isinstance(error, OSError):
        return error.errno, error.filename
    if type(error).__name__ == "OperationalError":
        text = str(error)
        return next((code for message, code in SQLITE_ERRNOS.items() if message in text), None), None
    return None, None


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


def cluster_options(command):
    """The options that say how steps run in a cluster, shared by compile, submit and register-pipeline."""
    options = [
        click.option("--image", envvar="KUBETUNE_IMAGE", help="Runtime image of the steps. Env: KUBETUNE_IMAGE."),
        click.option(
            "--trainer-image",
            envvar="KUBETUNE_TRAINER_IMAGE",
            help="Image of GPU trial pods. Env: KUBETUNE_TRAINER_IMAGE.",
        ),
        click.option(
            "--secret",
            envvar="KUBETUNE_CREDENTIALS_SECRET",
            default="kubetune-credentials",
            show_default=True,
            help="Kubernetes Secret holding KUBETUNE_STORAGE and the S3 keys, injected as environment variables.",
        ),
        click.option(
            "--config-map",
            envvar="KUBETUNE_CONFIG_MAP",
            default="kubetune-config",
            show_default=True,
            help="ConfigMap holding MLFLOW_TRACKING_URI, the S3 endpoint and the KFP host.",
        ),
        click.option(
            "--image-pull-secret",
            "image_pull_secrets",
            multiple=True,
            envvar="KUBETUNE_IMAGE_PULL_SECRETS",
            help="Image pull Secret for every step (repeatable). Env: KUBETUNE_IMAGE_PULL_SECRETS (space-separated).",
        ),
        click.option(
            "--gpu-node-selector",
            envvar="KUBETUNE_GPU_NODE_SELECTOR",
            default="{}",
            callback=_json_option,
            help="JSON node selector added to GPU trial pods (the spec's own wins). Env: KUBETUNE_GPU_NODE_SELECTOR.",
        ),
        click.option(
            "--gpu-tolerations",
            envvar="KUBETUNE_GPU_TOLERATIONS",
            default="[]",
            callback=_json_option,
            help="JSON list of tolerations added to GPU trial pods. Env: KUBETUNE_GPU_TOLERATIONS.",
        ),
        click.option(
            "--service-account",
            envvar="KUBETUNE_SERVICE_ACCOUNT",
            help="ServiceAccount the runs use. Env: KUBETUNE_SERVICE_ACCOUNT.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _json_option(ctx: click.Context, param: click.Parameter, value: str):
    try:
        return json.loads(value) if value else None
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"must be JSON, e.g. '{param.default}', but got {value!r} ({error.msg})") from None


def _cluster(
    image, trainer_image, secret, config_map, image_pull_secrets, gpu_node_selector, gpu_tolerations, service_account
):
    from kubetune.cluster_settings import ClusterSettings

    overrides = {k: v for k, v in {"image": image, "trainer_image": trainer_image}.items() if v}
    return ClusterSettings(
        secret=secret,
        config_map=config_map,
        image_pull_secrets=tuple(image_pull_secrets),
        gpu_node_selector=gpu_node_selector or {},
        gpu_tolerations=tuple(gpu_tolerations or ()),
        service_account=service_account,
        **overrides,
    )


host_option = click.option(
    "--host",
    envvar="KUBETUNE_KFP_HOST",
    help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow.svc:8888. Env: KUBETUNE_KFP_HOST.",
)
namespace_option = click.option(
    "--namespace",
    envvar="KUBETUNE_NAMESPACE",
    help="Kubeflow profile namespace (multi-user KFP). Env: KUBETUNE_NAMESPACE. Default: the pod's own namespace.",
)


@cli.command()
@experiment_argument
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Pipeline YAML to write (default: NAME.pipeline.yaml)."
)
@cluster_options
def compile(experiment_file: str, output: str | None, **cluster) -> None:
    """Write the KFP pipeline YAML to upload in the Kubeflow UI."""
    from kubetune.pipelines import compile_pipeline
    from kubetune.siblings import studies

    experiment = _load(experiment_file)
    settings = _cluster(**cluster)
    path = compile_pipeline(experiment, output or f"{experiment.name}.pipeline.yaml", settings)
    click.echo(f"wrote {path}: upload it in the Kubeflow UI (Pipelines > Upload pipeline), then Create run.")
    for sibling in studies(experiment)[1:]:  # strategy.seeds and baseline: a pipeline per study, run each
        other = compile_pipeline(
            sibling.experiment, path.with_name(f"{sibling.experiment.name}.pipeline.yaml"), settings
        )
        click.echo(f"wrote {other}: the {sibling.role} study of seed repeat {sibling.repeat}; create a run of it too.")


@cli.command()
@experiment_argument
@host_option
@namespace_option
@cluster_options
def submit(experiment_file: str, host: str | None, namespace: str | None, **cluster) -> None:
    """Start the experiment's first segment as a KFP run (the same spec again starts nothing)."""
    from kubetune.cluster import submit_segment
    from kubetune.siblings import studies

    settings = _cluster(**cluster)
    for sibling in studies(_load(experiment_file)):  # strategy.seeds and baseline: each study its own chain of runs
        experiment = sibling.experiment
        submission = submit_segment(experiment, segment=0, cluster=settings, host=host, namespace=namespace)
        state = "submitted" if submission.created else "already submitted, nothing new started:"
        click.echo(f"{state} run {submission.run_name} (id {submission.run_id}) in KFP experiment {experiment.name}")


@cli.command()
@experiment_argument
@host_option
@namespace_option
@cluster_options
def resume(experiment_file: str, host: str | None, namespace: str | None, **cluster) -> None:
    """Continue an experiment whose chain of runs stopped without a stop rule (reads the study: KUBETUNE_STORAGE)."""
    from kubetune.cluster import resume_experiment
    from kubetune.siblings import studies

    settings = _cluster(**cluster)
    for sibling in studies(_load(experiment_file)):
        click.echo(resume_experiment(sibling.experiment, cluster=settings, host=host, namespace=namespace))


@cli.command("register-pipeline")
@host_option
@namespace_option
@click.option("--name", default="kubetune-search", show_default=True, help="Pipeline name in KFP.")
@click.option("--version", "version", required=True, help="Pipeline version name, e.g. the chart and app version.")
@click.option(
    "--experiment",
    "experiment_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Spec whose pipeline is registered (its spec is the run's default parameter). Default: the digits example.",
)
@cluster_options
def register_pipeline(
    host: str | None, namespace: str | None, name: str, version: str, experiment_file: str | None, **cluster
) -> None:
    """Upload the search pipeline to KFP as a new version (idempotent), so the UI can start runs."""
    from kubetune.cluster import register_search_pipeline
    from kubetune.examples import default_experiment

    experiment = _load(experiment_file) if experiment_file else default_experiment()
    pipeline_id, created = register_search_pipeline(
        experiment, name=name, version=version, cluster=_cluster(**cluster), host=host, namespace=namespace
    )
    click.echo(
        f"pipeline {name} version {version} {'registered' if created else 'already registered'} (pipeline id {pipeline_id})"
    )


@cli.command()
@click.argument("name")
@home_option
@namespace_option
def status(name: str, home: str | None, namespace: str | None) -> None:
    """Show an experiment's progress from the study and MLflow: trials, best value, champion, segment, stop reason."""
    _set_home(home)
    from kubetune.status import experiment_status, print_status

    print_status(experiment_status(name))
    if namespace:
        click.echo(f"KFP runs of this experiment are in namespace {namespace}.")


@cli.command()
@click.argument("name")
@home_option
@click.option(
    "-o",
    "--output-dir",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Folder for NAME.html.",
)
def report(name: str, home: str | None, directory: str) -> None:
    """Write the reproducibility report NAME.html (NAS checklist answered from the study) and log it to MLflow."""
    _set_home(home)
    from kubetune.report_page import ARTIFACT_FOLDER, publish

    path, run_id = publish(name, directory)
    logged = (
        f"; logged as {ARTIFACT_FOLDER}/{path.name} on MLflow run {run_id}"
        if run_id
        else "; not logged to MLflow: the study has no parent run yet"
    )
    click.echo(f"wrote {path}{logged}")


@cli.command()
@click.argument("experiment_file", metavar="[EXPERIMENT.yaml]", required=False, type=click.Path(dir_okay=False))
@host_option
@namespace_option
def doctor(experiment_file: str | None, host: str | None, namespace: str | None) -> None:
    """Check that the cluster can run kubetune: KFP, namespace, Secret, ConfigMap, run account, GPUs, database, MLflow."""
    from kubetune.doctor import Context, run_checks
    from kubetune.kfp_api import resolve_namespace

    experiment = _load(experiment_file) if experiment_file else None
    results = run_checks(Context(host, resolve_namespace(namespace), experiment))
    for result in results:
        click.echo(result.line())
    failed = [result.name for result in results if not result.ok]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(results)} checks failed ({', '.join(failed)}); fix the lines marked FAIL"
        )


@cli.command()
@experiment_argument
@home_option
@click.option("--verbose", is_flag=True, help="Show every step's log instead of the progress bar.")
def run(experiment_file: str, home: str | None, verbose: bool) -> None:
    """Run the search on this machine (kfp.local); re-running resumes it."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # schema set-up chatter would tear the progress bar
    _set_home(home)
    experiment = _load(experiment_file)
    from kubetune import settings
    from kubetune.stepserver import serving

    # Started before this process imports KFP, Optuna and MLflow for itself, so the server's imports (the
    # first step waits for them) overlap these; one server serves every study of the loop below.
    with serving(settings.logs_folder() / "step-server.log"):
        from kubetune.console import run_with_progress
        from kubetune.local import StepFailed
        from kubetune.siblings import studies

        searches = studies(experiment)
        for sibling in searches:  # strategy.seeds and baseline: one study after another
            if len(searches) > 1:
                click.echo(f"kubetune: study {sibling.experiment.name} ({sibling.role}, seed repeat {sibling.repeat})")
            try:
                run_with_progress(sibling.experiment, verbose=verbose)
            except StepFailed as error:  # not the user's input: exit 1, with the step's log to read
                raise click.ClickException(str(error)) from None
    if len(searches) > 1:
        click.echo(f"kubetune: ran {len(searches)} studies; compare them with `kubetune report {experiment.name}`")


@cli.group()
def meta() -> None:
    """Meta-learning from every experiment in the study database."""


@meta.command("fit")
@home_option
def meta_fit(home: str | None) -> None:
    """Fit the meta model on every completed trial of every experiment; register it as kubetune-meta."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _set_home(home)
    from kubetune.meta_store import META_MODEL, fit_database

    summary = fit_database()
    click.echo(
        f"kubetune: learned from {summary['trials']} completed trials of {summary['studies']} experiments "
        f"({summary['pairs']} pairs); leave-one-experiment-out: mean absolute error {summary['loso_mae']:.4g}, "
        f"rank correlation within an experiment {summary['loso_spearman']}"
    )
    for name, reason in summary["skipped"].items():
        click.echo(f"kubetune: skipped experiment {name}: {reason}")
    click.echo(f"kubetune: registered {META_MODEL} version {summary['version']}")


@cli.command("dev-stack")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Keep the servers' data here (reused next time). Default: a temporary directory.",
)
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
    main()
