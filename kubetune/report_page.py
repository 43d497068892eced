"""The reproducibility report as one self-contained HTML page: inline CSS, plots as inline PNG.

One file that opens anywhere (a mail, an MLflow artifact view, an air-gapped cluster): no script, no
stylesheet or image to fetch; the plots (:mod:`kubetune.report_plots`) are inline PNG.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

from kubetune import report_plots, tracking
from kubetune.report_facts import gather

__all__ = ["publish", "render"]

ARTIFACT_FOLDER = "report"
NOT_RECORDED = "not recorded"
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f5f6f8;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 2px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 20px;margin:16px 0}
.checklist{color:#5b6475;font-size:13px;margin:0 0 10px}.meta{color:#5b6475;margin:0}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 14px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6475;font-weight:600}tr+tr td{border-top:1px solid #eef0f3}
code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f0f2f5;border-radius:4px}
code{padding:1px 5px}pre{padding:8px 12px;overflow:auto;max-height:320px}
.facts{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0 0}.fact{background:#fff;border:1px solid #dde1e7;
border-radius:8px;padding:8px 14px}.fact b{display:block;font-size:20px}
.plots{display:flex;gap:12px;flex-wrap:wrap}.plots img{max-width:100%;width:500px;height:auto}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin:16px 0}.pair>section{margin:0}
@media (max-width:800px){.pair{grid-template-columns:1fr}}
.runs td,.runs th{white-space:nowrap}.missing{color:#9a5b00}.warn{color:#b42318;font-weight:600}
"""


def publish(name: str, directory: str | Path) -> tuple[Path, str | None]:
    """Write ``DIR/<name>.html`` and attach it to the experiment's parent MLflow run as ``report/<name>.html``.

    Returns the file and the parent run id (None when the study never made one: nothing is logged).
    """
    facts = gather(name)
    path = Path(directory) / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(facts), encoding="utf-8")
    run_id = facts["mlflow_parent_run_id"]
    if run_id is not None:
        client = tracking.client()
        tracking.with_retries(
            lambda: client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_FOLDER),
            what=f"attaching the report to the parent run of experiment {name!r}",
        )
    return path, run_id


def render(facts: dict) -> str:
    """The page for the facts of :func:`kubetune.report_facts.gather`."""
    name = html.escape(facts["experiment"])
    sections = "".join(_row(facts, row) for row in LAYOUT)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>kubetune report: {name}</title>'
        f"<style>{CSS}</style></head><body><main><h1>Reproducibility report: {name}</h1>"
        f'<p class="meta">Generated {_e(_when(facts["generated_at"]))} by kubetune {_e(facts["kubetune_version"])}, '
        "from the study database. Lindauer &amp; Hutter's NAS best-practice checklist, "
        f"answered with recorded facts.</p>{_headline(facts)}{sections}</main></body></html>"
    )


def _row(facts: dict, row: tuple) -> str:
    """One section across the page, or two side by side."""
    cells = "".join(_section(title, checklist, body(facts)) for title, checklist, body in row)
    return cells if len(row) == 1 else f'<div class="pair">{cells}</div>'


def _e(value: object) -> str:
    """Escaped text of a value; numbers with 4 significant digits; absent values say so."""
    if value is None:
        return f'<span class="missing">{NOT_RECORDED}</span>'
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: dict, header: tuple[str, str] | None = None) -> str:
    head = "" if header is None else f"<tr><th>{_e(header[0])}</th><th>{_e(header[1])}</th></tr>"
    body = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in rows.items())
    return f"<table>{head}{body}</table>"


def _section(title: str, checklist: str, body: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="checklist">Checklist: {_e(checklist)}</p>{body}</section>'


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _when(iso: str | None) -> str | None:
    """``2026-01-05 12:00:00 UTC`` from the UTC ISO time the facts hold."""
    return None if iso is None else iso.replace("T", " ").replace("+00:00", " UTC")


def _headline(facts: dict) -> str:
    summary, objective = facts["summary"], facts["objectives"][0]["metric"]
    items = {
        f"best {objective}": summary.get(f"best_{objective}"),
        "trials complete / budget": f"{summary['trials_complete']} / {summary['trials_budget']}",
        "end-to-end time": _duration(facts["timing"]["end_to_end_seconds"]),
        "search-space hash": facts["search_space"]["fingerprint"],
    }
    cells = "".join(f'<div class="fact">{_e(label)}<b>{_e(value)}</b></div>' for label, value in items.items())
    return f'<div class="facts">{cells}</div>'


def _yaml(value: object) -> str:
    return f"<pre>{html.escape(yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip())}</pre>"


def _space(facts: dict) -> str:
    space = facts["search_space"]
    if space["fingerprint_matches_spec"]:
        match = "the spec below hashes to it"
    else:
        match = (
            '<span class="warn">the spec below hashes differently today: another kubetune version recorded it</span>'
        )
    parts = [
        "<p>Hash of data, objective, parameters, architecture, epochs and batch size: "
        f"<code>{_e(space['fingerprint'])}</code>; {match}.</p>"
    ]
    architecture = space["architecture"]
    searched = _yaml(space["parameters"]) if space["parameters"] else "<p>none</p>"
    network = _yaml(architecture) if architecture else "<p>none (a fixed network)</p>"
    parts.append(
        f'<div class="pair"><div><p>Hyperparameters searched:</p>{searched}</div>'
        f"<div><p>Architecture space:</p>{network}</div></div>"
    )
    return "".join(parts)


def _versions(facts: dict) -> str:
    versions = facts["versions"]
    recorded = _table(versions, ("package", "version")) if versions else f"<p>{_e(None)}</p>"
    return f"<p>Recorded when the study was created (study attribute <code>versions</code>):</p>{recorded}"


def _hardware(facts: dict) -> str:
    rows = []
    for record in facts["hardware"]:
        hardware = record["hardware"]
        if hardware is None:
            described = _e(None)
        else:
            described = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in hardware.items())
        rows.append(f"<tr><td>{described}</td><td>{record['trials']}</td></tr>")
    if not rows:
        return "<p>No trial has finished yet.</p>"
    return f"<table><tr><th>hardware of the trial</th><th>finished trials</th></tr>{''.join(rows)}</table>"


def _seeds(facts: dict) -> str:
    seeds = facts["seeds"]
    return (
        _table(
            {
                "sampler seed": seeds["sampler"],
                "data split and subset seed (data.seed)": seeds["data"],
                "a trial's weights and batches": seeds["per_trial_rule"],
                "the champion trial's seed": seeds["champion_trial_seed"],
                "repeated searches": len(facts["comparison"]["seeds"]["runs"]),
            }
        )
        + "<p>Parallel lanes offset the sampler seed by a hash of (segment, slot), so they draw different points.</p>"
    )


def _training(facts: dict) -> str:
    training = facts["training"]
    searched = ", ".join(training["searched_hyperparameters"]) or "none"
    settings = {
        "epochs per trial": training["epochs"],
        "fidelity": training["fidelity"],
        "pruner": training["pruner"],
        "sampler": training["sampler"],
        "budget (trials, in parallel)": f"{training['budget']['max_trials']}, {training['budget']['parallel_trials']}",
        "hyperparameters searched": searched,
        "architecture searched": "yes" if training["architecture_searched"] else "no",
    }
    fixed = _table(training["fixed_hyperparameters"], ("fixed hyperparameter", "value"))
    return (
        f"{_table(settings)}<p>Every trial trains with these values (trainer defaults and trial settings):</p>{fixed}"
    )


def _data(facts: dict) -> str:
    data = facts["data"]
    profile = (
        _table(data["profile"], ("measured", "value"))
        if data["profile"]
        else f"<p>Data profile (rows, features, classes, balance): {_e(None)}.</p>"
    )
    return f"{profile}<p>The spec's data section:</p>{_table(data['spec'])}"


def _cost(facts: dict) -> str:
    timing, summary = facts["timing"], facts["summary"]
    end_to_end, train = timing["end_to_end_seconds"], timing["train_seconds_sum"]
    share = None if not end_to_end or train is None else f"{100 * train / end_to_end:.0f}%"
    return _table(
        {
            "study created": _when(timing["started_at"]),
            "last trial finished": _when(timing["finished_at"]),
            "end to end (creation to last trial)": _duration(end_to_end),
            f"training, summed over {timing['trials_with_train_seconds']} trials": _duration(train),
            "training's share of end to end": share,
            "trials complete, pruned, failed": f"{summary['trials_complete']}, {summary['trials_pruned']}, "
            f"{summary['trials_failed']}",
            "stop reason": summary["stop_reason"],
        }
    )


def _over_time(facts: dict) -> str:
    curve = facts["curve"]
    if not curve:
        return "<p>No trial has completed yet.</p>"
    metric = facts["objectives"][0]["metric"]
    trials = report_plots.history(curve, "trial", metric)
    timed = [p for p in curve if p["minutes"] is not None]
    minutes = report_plots.history(timed, "minutes", metric)
    note = "" if len(facts["objectives"]) == 1 else f"<p>Plotted: the first objective, {_e(metric)}.</p>"
    return f'{note}<div class="plots">{_img(trials, "over trials")}{_img(minutes, "over wall time")}</div>'


def _protocol(facts: dict) -> str:
    evaluation = facts["evaluation"]
    selection = ", ".join(evaluation["selection_metrics"])
    text = (
        f"<p>Trials are compared, pruned and the champion chosen on <b>{_e(selection)}</b> only, measured on the "
        f"validation split ({evaluation['validation_fraction']:.0%} of the rows). The test split "
        f"({evaluation['test_fraction']:.0%}) is scored for each trial and stored, but nothing in the search "
        "reads it; this page reports test metrics for the champion only.</p>"
    )
    if evaluation["champion_trial"] is None:
        return text + "<p>No champion yet.</p>"
    metrics = {**evaluation["champion_validation"], **evaluation["champion_test"]}
    if not evaluation["champion_test"]:
        metrics["test metrics"] = None
    return text + f"<p>Champion: trial {evaluation['champion_trial']}.</p>" + _table(metrics, ("metric", "value"))


def _baseline(facts: dict) -> str:
    comparison = facts["comparison"]
    groups = {"search": comparison["seeds"], "random search": comparison["baseline"]}
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td><code>{_e(run['study'])}</code></td><td>{len(run['best_so_far'])}</td>"
        f"<td>{_e(run['best'])}</td></tr>"
        for label, group in groups.items()
        for run in group["runs"]
    )
    missing = [name for group in groups.values() for name in group["missing"]]
    parts = [
        '<table class="runs"><tr><th>method</th><th>study</th><th>completed trials</th><th>best</th></tr>'
        + rows
        + "</table>"
    ]
    if missing:
        parts.append(f'<p class="missing">Named but not in the study database: {_e(", ".join(missing))}.</p>')
    if comparison["baseline_hint"]:
        parts.append(f'<p class="missing">{_e(comparison["baseline_hint"])}.</p>')
    parts += [_final_spread(label, group) for label, group in groups.items() if len(group["runs"]) > 1]
    metric = facts["objectives"][0]["metric"]
    if not any(group["spread"] for group in groups.values()):
        return "".join(parts) + "<p>No trial has completed yet.</p>"
    png = report_plots.spread(groups, metric)
    return f'<div class="plots"><div>{"".join(parts)}</div>{_img(png, "best so far: search and random")}</div>'


def _final_spread(label: str, group: dict) -> str:
    """The spread at the last trial index that every run reached."""
    runs = len(group["runs"])
    row = [r for r in group["spread"] if r["runs"] == runs][-1:]
    if not row:
        return ""
    at = row[0]
    return (
        f"<p>{_e(label.capitalize())} over {runs} runs, best after {at['index']} completed trials: median {_e(at['median'])}, "
        f"min {_e(at['min'])}, max {_e(at['max'])}.</p>"
    )


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# The checklist items in page order, each with its section; short ones in pairs side by side.
LAYOUT = (
    (("Search space", "Release the search space; compare on the same space", _space),),
    (
        ("Code and library versions", "Control confounders: library versions", _versions),
        ("Hardware", "Control confounders: hardware", _hardware),
    ),
    (
        ("Seeds", "Run several times and report seeds", _seeds),
        ("Data set", "Compare on the same benchmark and data split", _data),
    ),
    (
        ("Training pipeline", "Release the training pipeline; report how hyperparameters were tuned", _training),
        ("Cost: end-to-end time", "Report the end-to-end time of the whole search, not only training", _cost),
    ),
    (("Performance over time", "Compare performance over time (trials and wall time)", _over_time),),
    (("Final evaluation protocol", "Use the same evaluation protocol; never select on test data", _protocol),),
    (("Comparison with random search", "Compare with random search; report the spread over seeds", _baseline),),
)
