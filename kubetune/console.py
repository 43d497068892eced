"""What `kubetune run` shows: its progress while it searches (a bar on a terminal, plain lines elsewhere),
a summary table when it ends."""

from __future__ import annotations

import datetime as dt
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubetune.spec import Experiment

__all__ = ["print_summary", "run_with_progress"]


def _format_value(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def run_with_progress(experiment: Experiment, *, verbose: bool = False, console: Console | None = None) -> dict:
    """Run the experiment locally showing its progress; print and return the summary."""
    from kubetune import local, registry, report
    from kubetune.study import load_study

    console = console or Console()
    started = time.monotonic()
    with _progress_display(experiment, console, verbose=verbose) as show:
        reason = local.run_experiment(experiment, report=show, verbose=verbose)
    study = load_study(experiment)
    summary = report.summarize(study, experiment)
    summary["stop_reason"] = reason
    summary["run_seconds"] = round(time.monotonic() - started, 1)
    champion = registry.champion(experiment)
    if champion:
        summary["champion"] = (
            f"models:/{experiment.model_name}@{experiment.spec.registry.alias} (version {champion['version']}, trial {champion['trial']})"
        )
    print_summary(summary, report.where_to_look(experiment), console=console)
    return summary


@contextmanager
def _progress_display(experiment: Experiment, console: Console, *, verbose: bool):
    """A live bar on a terminal; whole plain lines in a file or a Job's log, where a bar is cut to 80 columns."""
    if verbose or console.is_terminal:
        with _progress_bar(experiment, console, disabled=verbose) as show:
            yield show
    else:
        yield _progress_lines(experiment, console)


@contextmanager
def _progress_bar(experiment: Experiment, console: Console, *, disabled: bool):
    metric = experiment.spec.objectives[0].metric
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials  segment {task.fields[segment]}  running {task.fields[running]}  best {task.fields[best]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, disable=disabled) as bar:
        task = bar.add_task(experiment.name, total=experiment.spec.budget.max_trials, segment=0, running=0, best="-")

        def show(progress) -> None:
            bar.update(
                task,
                completed=progress.done,
                segment=progress.segment,
                running=progress.running,
                best=f"{metric}={_format_value(progress.best)}",
            )

        yield show


def _progress_lines(experiment: Experiment, console: Console):
    """A report callback that prints one unwrapped line whenever the progress changes."""
    metric = experiment.spec.objectives[0].metric
    started = time.monotonic()
    last = None

    def show(progress) -> None:
        nonlocal last
        if progress == last:
            return
        last = progress
        elapsed = dt.timedelta(seconds=int(time.monotonic() - started))
        console.out(
            f"{experiment.name}: {progress.done}/{progress.budget} trials  segment {progress.segment}  "
            f"running {progress.running}  best {metric}={_format_value(progress.best)}  {elapsed}",
            highlight=False,
        )

    return show


def print_summary(summary: dict, where: dict[str, str], *, console: Console) -> None:
    table = Table(title=f"kubetune experiment {summary['experiment']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # long values wrap whole, never end in an ellipsis
    rows = {
        "stopped because": summary.get("stop_reason"),
        "trials": f"{summary['trials_complete']} complete, {summary['trials_pruned']} pruned, "
        f"{summary['trials_failed']} failed (budget {summary['trials_budget']})",
        "wall time": f"{summary.get('run_seconds', summary['wall_seconds'])} s",
        "best trial": summary.get("best_trial"),
    }
    rows.update(
        {
            key.replace("_", " "): _format_value(value)
            for key, value in summary.items()
            if key.startswith("best_") and isinstance(value, (int, float)) and key != "best_trial"
        }
    )
    rows["best hyperparameters"] = ", ".join(
        f"{k}={_format_value(v)}" for k, v in summary.get("best_hyperparameters", {}).items()
    )
    architecture = summary.get("best_architecture")
    if architecture and "blocks" in architecture:
        rows["best architecture"] = "\n".join(
            " ".join(f"{k}={_format_value(v)}" for k, v in block.items()) for block in architecture["blocks"]
        )
    elif architecture:  # a cell: its code (kubetune.encoding) says it all on one line
        rows["best architecture"] = summary.get("best_architecture_code")
    if summary.get("pareto_front") is not None:
        rows["pareto front (trials)"] = ", ".join(map(str, summary["pareto_front"]))
    rows["registered model"] = summary.get("champion")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
    # The commands on whole lines, so that they can be copied from a narrow terminal or a Job's log.
    for label, command in (("MLflow UI", where["mlflow"]), ("Optuna dashboard", where["optuna_dashboard"])):
        console.print(f"{label}: {command}", soft_wrap=True, markup=False, highlight=False)
