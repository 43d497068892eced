"""MLflow tracking: one parent run per experiment, one child run per trial, found again by tags.

Every write looks its run up by tags first, so a re-run step never logs a trial twice. Only the
client API is used (no global active run), so lanes in threads or processes cannot interfere.

MLflow or its artifact store may be briefly away (a restart). Every write here is retried with
bounded exponential backoff: ``KUBETUNE_RETRY_ATTEMPTS`` attempts (default 5), waiting
``KUBETUNE_RETRY_BACKOFF_SECONDS`` (default 2) after the first failure and twice as long after each
next one (30 s in all by default). Then a :class:`TrackingError` names the tracking URI, never a
password. MLflow's own per-request retries (7 by default, minutes long) are lowered to one unless
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set, so that this policy is the bound. Before its first call
to an MLflow server a process checks that the server answers at all, so a wrong
``MLFLOW_TRACKING_URI`` fails in seconds, not after MLflow's long timeouts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import tenacity
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kubetune import encoding, settings
from kubetune.errors import UserError
from kubetune.redaction import redact_url, scrub, url_secrets
from kubetune.spec import Experiment

__all__ = [
    "MissingWeights",
    "TrackingError",
    "client",
    "download_trial_weights",
    "ensure_parent_run",
    "flatten_architecture",
    "log_summary",
    "log_trial",
    "retry_policy",
    "run_exists",
    "summary_tag",
    "trial_weights_path",
    "with_retries",
]

TAG_STUDY = "kubetune.study"
TAG_ROLE = "kubetune.role"
TAG_TRIAL = "kubetune.trial"
MODEL_FILE = "model.pt"
# A trial's state as the status of its run, the mark MLflow's runs table shows by default.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
SUMMARY_TAG_LIMIT = 4900  # characters: below MLflow's tag value limit on every backend


RETRY_ATTEMPTS_ENV = "KUBETUNE_RETRY_ATTEMPTS"
RETRY_BACKOFF_ENV = "KUBETUNE_RETRY_BACKOFF_SECONDS"
DEFAULT_RETRY_ATTEMPTS = 5
DEFAULT_RETRY_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 5.0
# MLflow error codes that no amount of waiting fixes.
PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INVALID_STATE",
    "BAD_REQUEST",
    "FEATURE_DISABLED",
    "NOT_FOUND",
    "ENDPOINT_NOT_FOUND",
}
# Environment variables whose values are secrets: scrubbed from every message this module writes.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

_log = logging.getLogger(__name__)
_answered: set[str] = set()  # MLflow servers this process has seen answer
T = TypeVar("T")


class TrackingError(UserError, RuntimeError):
    """MLflow could not be reached or refused a write; the message names the tracking URI."""


class MissingWeights(LookupError):
    """A trial's weights are not in the store: it never completed, or the store lost the experiment's run."""


def retry_policy() -> tuple[int, float]:
    """``(attempts, first backoff in seconds)`` from the environment; see the module docstring."""
    attempts, backoff = DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF_SECONDS
    raw = os.environ.get(RETRY_ATTEMPTS_ENV, "").strip()
    if raw:
        try:
            attempts = int(raw)
        except ValueError:
            attempts = 0
        if not 1 <= attempts <= 100:
            raise TrackingError(f"{RETRY_ATTEMPTS_ENV} must be a whole number from 1 to 100 but got {raw!r}")
    raw = os.environ.get(RETRY_BACKOFF_ENV, "").strip()
    if raw:
        try:
            backoff = float(raw)
        except ValueError:
            backoff = -1.0
        if not 0 <= backoff <= MAX_BACKOFF_SECONDS:
            raise TrackingError(
                f"{RETRY_BACKOFF_ENV} must be a number of seconds from 0 to {MAX_BACKOFF_SECONDS:g} but got {raw!r}"
            )
    return attempts, backoff


def client() -> MlflowClient:
    """An MLflow client for ``MLFLOW_TRACKING_URI``, once the server there has been seen to answer.

    It leaves MLflow's global tracking URI alone: a caller of MLflow's fluent API sets it itself.
    """
    uri = settings.tracking_uri()
    retry_policy()  # a malformed setting is reported as itself, not as an unreachable server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the retries are ours: see the module docstring
    if _is_http(uri) and uri not in _answered:
        _probe(uri)
        _answered.add(uri)
    return MlflowClient(tracking_uri=uri)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _probe(uri: str) -> None:
    """Raise a TrackingError unless something answers HTTP at ``uri`` (any status: a server is there)."""
    import requests

    def answer() -> None:
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_SECONDS, allow_redirects=False)
        except requests.exceptions.SSLError:
            pass  # a server is there; MLflow's own TLS settings (MLFLOW_TRACKING_INSECURE_TLS, ...) apply to real calls

    try:
        _retry(
            answer,
            what="reaching it",
            transient=lambda error: isinstance(error, requests.RequestException),
            level=logging.INFO,
        )  # the final message says it all; no chatter before it
    except TrackingError as error:
        raise TrackingError(
            f"MLflow at {redact_url(uri)} does not answer ({error}). Check MLFLOW_TRACKING_URI and that the server is up."
        ) from None


def _scrub(text: str) -> str:
    """``text`` without the values of secret variables nor the secrets in the storage and tracking URIs."""
    secrets = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    for name in ("KUBETUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        secrets += url_secrets(os.environ.get(name, ""))
    return scrub(text, *(value for value in secrets if len(value) >= 4))  # a shorter one would mask plain words


def _transient(error: BaseException) -> bool:
    """Worth another attempt: the server or its artifact store did not answer, or answered 5xx/429."""
    if isinstance(error, MlflowException):
        return error.error_code not in PERMANENT_CODES
    try:
        import requests

        if isinstance(error, requests.HTTPError) and error.response is not None:
            return error.response.status_code >= 500 or error.response.status_code == 429
        if isinstance(error, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, (BotoCoreError, ClientError)):
            return True
    except ImportError:
        pass
    return isinstance(error, (ConnectionError, TimeoutError, OSError))


def _retry(
    action: Callable[[], T], *, what: str, transient: Callable[[BaseException], bool], level: int = logging.WARNING
) -> T:
    """``action()``, retried by :func:`retry_policy` while ``transient`` says its error may pass; then a
    TrackingError saying what failed, after how many attempts, and why (a TrackingError passes through)."""
    attempts, backoff = retry_policy()

    def log(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        _log.log(
            level,
            "%s failed (attempt %d of %d, retrying in %.1f s): %s",
            what,
            state.attempt_number,
            attempts,
            delay,
            _reason(error) if error else "",
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff, max=MAX_BACKOFF_SECONDS),
        retry=tenacity.retry_if_exception(lambda error: not isinstance(error, TrackingError) and transient(error)),
        before_sleep=log,
        reraise=True,
    )
    try:
        return retrying(action)
    except TrackingError:
        raise
    except Exception as error:  # noqa: BLE001 - classified by `transient`
        if not transient(error):
            raise TrackingError(f"{what} failed: {_reason(error)}") from None
        waited = retrying.statistics.get("idle_for", 0.0)
        tries = f"{attempts} attempts over {waited:.1f} s" if attempts > 1 else "1 attempt"
        raise TrackingError(f"{what} failed after {tries}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The error on one line, secrets removed; for a refused or timed-out connection just that."""
    text = " ".join(str(error).split()) or type(error).__name__
    socket_error = re.search(r"(\[Errno -?\d+\] [^'\")]+|timed out|Read timed out)", text)
    if socket_error and ("HTTPConnectionPool" in text or "HTTPSConnectionPool" in text):
        where = re.search(r"url: (\S+)", text)
        text = f"{socket_error.group(1).strip()} ({where.group(1) if where else 'connection'})"
    return _scrub(f"{type(error).__name__}: {text[:300]}")


def with_retries(action: Callable[[], T], *, what: str) -> T:
    """Run ``action`` (which talks to MLflow) with the retry policy; a TrackingError naming the URI at the end."""
    try:
        return _retry(action, what=what, transient=_transient)
    except TrackingError as error:
        raise TrackingError(describe(error)) from None


def _experiment_id(mlflow_client: MlflowClient, experiment: Experiment) -> str:
    found = mlflow_client.get_experiment_by_name(experiment.name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            experiment.name, artifact_location=_artifact_location(experiment), tags={TAG_STUDY: experiment.name}
        )
    except MlflowException:  # created meanwhile by a racing step, or the server is away (retried by the caller)
        found = mlflow_client.get_experiment_by_name(experiment.name)
        if found is None:
            raise
        return found.experiment_id


def _artifact_location(experiment: Experiment) -> str | None:
    root = settings.artifact_root()
    return None if root is None else f"{root}/{experiment.name}"


def _search(mlflow_client: MlflowClient, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)


def ensure_parent_run(experiment: Experiment, known: str | None = None) -> str:
    """The experiment's parent run, created once, holding the spec and the recorded versions.

    ``known`` is the run the study recorded; it is kept while it exists. A store that lost it (a deleted
    ``mlflow.db``, a new server) gets a new run instead of failing every later step on a run id it no
    longer has.
    """
    mlflow_client = client()

    def ensure() -> str:
        if known is not None and _existing_run(mlflow_client, known) is not None:
            return known
        experiment_id = _experiment_id(mlflow_client, experiment)
        found = _search(mlflow_client, experiment_id, {TAG_ROLE: "parent", TAG_STUDY: experiment.name})
        if found:
            run_id = found[0].info.run_id
            if "fingerprint" in found[0].data.params:
                return run_id
        else:
            run_id = mlflow_client.create_run(
                experiment_id, run_name=experiment.name, tags={TAG_ROLE: "parent", TAG_STUDY: experiment.name}
            ).info.run_id
        # Also completes a parent run whose creation was interrupted before these were written.
        mlflow_client.log_dict(run_id, experiment.to_dict(), "experiment.json")
        mlflow_client.log_param(run_id, "fingerprint", experiment.search_space_fingerprint())
        return run_id

    return with_retries(ensure, what=f"creating the parent run of experiment {experiment.name!r}")


def _existing_run(mlflow_client: MlflowClient, run_id: str):
    """The run, or None when the store does not have it (or only in its trash)."""
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return run if run.info.lifecycle_stage == "active" else None


def run_exists(run_id: str) -> bool:
    """Whether the store still has the run (it lost it when ``mlflow.db`` was deleted or the server replaced)."""
    mlflow_client = client()
    return with_retries(lambda: _existing_run(mlflow_client, run_id) is not None, what=f"looking up run {run_id}")


def _reopen(mlflow_client: MlflowClient, run) -> None:
    """A trial logged after the experiment stopped (a resume with a larger budget): its run goes on."""
    if run.info.status != "RUNNING":
        mlflow_client.update_run(run.info.run_id, status="RUNNING")


def describe(error: Exception) -> str:
    """One line naming the tracking URI (password-free), what failed, and what to check."""
    uri = settings.tracking_uri()
    message = f"MLflow at {redact_url(uri)} refused or did not answer: {_scrub(str(error).splitlines()[0][:400])}"
    if not message.rstrip().endswith("."):
        message += "."
    if not _is_http(uri):
        return message + (
            " Check MLFLOW_TRACKING_URI and that this local store can be read and written; if it was "
            "deleted or replaced, run the experiment again: kubetune starts a new MLflow run for it "
            "(the trials kept in the study are not lost)."
        )
    hint = " Check MLFLOW_TRACKING_URI and that the server is up"
    store = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if store:
        hint += f", and that its artifact store answers (MLFLOW_S3_ENDPOINT_URL {redact_url(store)})"
    return message + hint + "."


def flatten_architecture(architecture: dict | None) -> dict[str, Any]:
    """MLflow params are flat: the trial's architecture parameters and its code (:func:`kubetune.encoding.flatten`)."""
    return encoding.flatten(architecture) if architecture else {}


def log_trial(
    experiment: Experiment,
    parent_run_id: str,
    *,
    number: int,
    state: str,
    hyperparameters: dict,
    architecture: dict | None,
    history: list[dict],
    metrics: dict[str, float],
    started_at: int | None = None,
    ended_at: int | None = None,
    inheritance: dict | None = None,
    fidelity: dict | None = None,
    suggested_by: dict | None = None,
) -> str:
    """Log one trial as a child run (params, per-epoch metrics, final metrics) once; its weights were
    uploaded by the train step (:func:`log_trial_weights`). ``inheritance`` (the trial's attribute of
    that name: its parent, and the copy summary or why nothing was copied) becomes the run's tags.
    ``fidelity`` (the trial's attribute: its kind and, per value reported, the step and the fidelity it was
    measured at) becomes the tag ``kubetune.fidelity`` and, but for fidelity epochs, metrics ``fidelity.<key>``
    at each reported step. ``suggested_by`` (the trial's attribute: the oneShot ranking or the DARTS search that
    proposed it) becomes tags ``kubetune.suggestedBy.<key>``.

    The run spans the trial's training (``started_at`` to ``ended_at``, wall-clock ms) and each epoch's
    metrics carry the time that epoch ended, so MLflow shows real durations and curves over time. Its
    status tells the trial's state at a glance: FINISHED complete, KILLED pruned, FAILED failed.
    The run is terminated last, so a run still RUNNING was left half-written by an attempt that
    failed or was killed: it is deleted and written again.
    """
    mlflow_client = client()

    def log() -> str:
        parent = mlflow_client.get_run(parent_run_id)
        found = _search(mlflow_client, parent.info.experiment_id, {TAG_STUDY: experiment.name, TAG_TRIAL: str(number)})
        if found and found[0].info.status != "RUNNING":
            return found[0].info.run_id
        _reopen(mlflow_client, parent)
        for partial in found:
            mlflow_client.delete_run(partial.info.run_id)
        run = mlflow_client.create_run(
            parent.info.experiment_id,
            start_time=started_at,
            run_name=f"trial-{number}",
            tags={
                TAG_STUDY: experiment.name,
                TAG_TRIAL: str(number),
                TAG_ROLE: "trial",
                "kubetune.state": state,
                "mlflow.parentRunId": parent_run_id,
                **_attr_tags("kubetune.inheritance", inheritance),
                **_attr_tags("kubetune.suggestedBy", suggested_by),
                **({"kubetune.fidelity": fidelity["kind"]} if fidelity else {}),
            },
        )
        run_id = run.info.run_id
        params = {**hyperparameters, **flatten_architecture(architecture)}
        mlflow_client.log_batch(
            run_id,
            params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()],
            metrics=_metric_entities(history, metrics) + _fidelity_entities(fidelity),
        )
        if architecture:
            mlflow_client.log_dict(run_id, architecture, "architecture.json")
        mlflow_client.set_terminated(run_id, status=RUN_STATUS[state], end_time=ended_at)
        return run_id

    return with_retries(log, what=f"logging trial {number}")


def _attr_tags(prefix: str, attrs: dict | None) -> dict[str, str]:
    """``<prefix>.<key>`` per key of a trial attribute (``kubetune.inheritance.parent``, ``.copied``, ...)."""
    return {f"{prefix}.{key}": str(value)[:SUMMARY_TAG_LIMIT] for key, value in (attrs or {}).items()}


def _metric_entities(history: list[dict], final: dict[str, float]) -> list:
    """Each epoch's metrics at the time the epoch ended (now for rows without one), the final ones now."""
    timestamp = mlflow.utils.time.get_current_time_millis()
    entities = [
        mlflow.entities.Metric(key, float(value), int(row.get("timestamp") or timestamp), int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key not in ("epoch", "timestamp") and value is not None
    ]
    entities += [mlflow.entities.Metric(f"final_{key}", float(value), timestamp, 0) for key, value in final.items()]
    return entities


def _fidelity_entities(fidelity: dict | None) -> list:
    """``fidelity.<key>`` for every key of every reported level (its fidelity, the value) at the level's step.

    None for fidelity epochs: there the step is the epoch, and the per-epoch metrics already say it all.
    """
    if not fidelity or fidelity["kind"] == "epochs":
        return []
    timestamp = mlflow.utils.time.get_current_time_millis()
    return [
        mlflow.entities.Metric(f"fidelity.{key}", float(value), timestamp, int(level["step"]))
        for level in fidelity["levels"]
        for key, value in level.items()
        if key != "step"
    ]


def trial_weights_path(number: int) -> str:
    """Where a trained trial's weights live among the experiment run's artifacts."""
    return f"trials/trial-{number}/{MODEL_FILE}"


def log_trial_weights(parent_run_id: str, number: int, source: str) -> str:
    """Upload a trained trial's weights once, straight from the train step, beside the experiment's run.

    They travel nowhere else (no pipeline artifact), so each trial's weights are stored once; the
    registry reads them from here. Returns their artifact path.
    """
    mlflow_client = client()
    path = trial_weights_path(number)
    folder, name = path.rsplit("/", 1)

    def upload() -> None:
        with tempfile.TemporaryDirectory() as staging:
            target = Path(staging) / name  # MLflow keeps the local file name
            shutil.copyfile(source, target)
            mlflow_client.log_artifact(parent_run_id, str(target), artifact_path=folder)

    with_retries(upload, what=f"uploading the weights of trial {number}")
    return path


def download_trial_weights(parent_run_id: str, number: int, folder: str) -> str:
    """Download the weights :func:`log_trial_weights` uploaded for trial ``number`` into ``folder``; their path.

    Raises MissingWeights (never retried: waiting brings nothing back) when the experiment's run or the
    file is not there, and TrackingError when the store does not answer within the retry policy.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mlflow_client = client()
    path = trial_weights_path(number)
    run = with_retries(lambda: _existing_run(mlflow_client, parent_run_id), what=f"looking up run {parent_run_id}")
    if run is None:
        raise MissingWeights(f"the experiment's MLflow run {parent_run_id} is gone (its store was deleted or replaced)")
    # The run's own artifact repository, as the registry reads them: client.download_artifacts turns every
    # failure, an artifact store that is down included, into "does not exist".
    repository = get_artifact_repository(run.info.artifact_uri, mlflow_client.tracking_uri)

    def download() -> str | None:
        if path not in {entry.path for entry in repository.list_artifacts(path.rsplit("/", 1)[0])}:
            return None
        return repository.download_artifacts(path, folder)

    found = with_retries(download, what=f"downloading the weights of trial {number}")
    if found is None:
        raise MissingWeights(
            f"trial {number} has no stored weights ({path} is not among the experiment run's artifacts)"
        )
    return found


def log_summary(parent_run_id: str, summary: dict, plots: dict[str, str]) -> None:
    """Attach the end-of-run summary and the plot files to the parent run."""
    mlflow_client = client()

    def log() -> None:
        mlflow_client.log_dict(parent_run_id, summary, "summary.json")
        for path in plots.values():
            mlflow_client.log_artifact(parent_run_id, path, artifact_path="plots")
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        mlflow_client.log_batch(
            parent_run_id,
            metrics=[
                mlflow.entities.Metric(k, float(v), mlflow.utils.time.get_current_time_millis(), 0)
                for k, v in numbers.items()
            ],
        )
        mlflow_client.set_tag(parent_run_id, "kubetune.summary", summary_tag(summary))
        mlflow_client.set_terminated(parent_run_id, status="FINISHED")  # the experiment stopped; a resume reopens it

    with_retries(log, what="attaching the summary to the parent run")


def log_supernet(parent_run_id: str, summary: dict) -> None:
    """The search-supernet step's summary as the parent run's artifact ``supernet.json``; its strategy as the tag
    ``kubetune.supernet``."""
    mlflow_client = client()

    def log() -> None:
        mlflow_client.log_dict(parent_run_id, summary, "supernet.json")
        mlflow_client.set_tag(parent_run_id, "kubetune.supernet", summary["strategy"])

    with_retries(log, what="attaching the supernet summary to the parent run")


def summary_tag(summary: dict) -> str:
    """The summary as JSON that fits a tag; when it does not, its short fields only (always valid JSON),
    with a pointer to the whole summary in the run's artifacts."""
    text = json.dumps(summary)
    if len(text) <= SUMMARY_TAG_LIMIT:
        return text
    short = {
        key: value
        for key, value in summary.items()
        if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200)
    }
    text = json.dumps({**short, "truncated": "the whole summary is the artifact summary.json"})
    return text if len(text) <= SUMMARY_TAG_LIMIT else json.dumps({"truncated": "see the artifact summary.json"})
