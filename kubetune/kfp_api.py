"""The thin boundary to the Kubeflow Pipelines API: submit runs and register pipelines, idempotently.

Everything here goes through ``kfp.Client``; nothing else in kubetune talks to the KFP server. Runs are
found again by their display name, which carries the spec's hash and the segment, so submitting the
same thing twice starts one run. The gateway brings its own ServiceAccount token and namespace, because
kfp.Client does neither when it is given a host, and it refuses a backend older than the pipelines
kubetune compiles need. Tests run it against a local HTTP double of the API in both KFP modes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from kubetune.errors import UserError

__all__ = [
    "MINIMUM_BACKEND",
    "Backend",
    "KfpError",
    "KfpGateway",
    "RunInfo",
    "Submission",
    "call",
    "connect",
    "probe_backend",
    "resolve_namespace",
    "token_file",
]

_log = logging.getLogger(__name__)

# The `optional` field of SecretAsEnv / ConfigMapAsEnv that kfp-kubernetes 2.17 emits first exists in
# kubernetes_platform/proto/kubernetes_executor_config.proto@2.15.0, and the backend parses the platform
# spec with protojson, which refuses unknown fields (backend/src/apiserver/template/v2_template.go@2.15.0).
# (dsl.Collected would need 2.14, CHANGELOG.md@2.17.0; the segment pipeline no longer uses it.)
MINIMUM_BACKEND = "2.15.0"
NAMESPACE_ENV = "KUBETUNE_NAMESPACE"
# kfp.client.client.KF_PIPELINES_SA_TOKEN_ENV / _PATH (kfp 2.17.0): the PodDefault mounts the token here.
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# kfp.Client reports what the server holds under a name as a ValueError (kfp/client/client.py@2.17.0:
# "No experiment is found with name ...", "Multiple experiments is found with name ...").
KFP_LOOKUP_ERROR = re.compile(r"(No|Multiple) \w+ (is|are) found")
NAMESPACE_FIX = f"pass --namespace or set {NAMESPACE_ENV} to your profile namespace (e.g. team-a)"


class KfpError(UserError):
    """The KFP API could not be reached or refused a request; the message names the host."""


@dataclass(frozen=True)
class RunInfo:
    name: str
    run_id: str
    state: str

    @property
    def active(self) -> bool:
        """Still able to run a step (V2beta1RuntimeState); an unreported state counts as active."""
        return self.state not in ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


@dataclass(frozen=True)
class Submission:
    run_id: str
    run_name: str
    created: bool


def _version(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class Backend:
    """What the API's healthz says: mode and version (``tag_name``, "unknown" in builds without one)."""

    host: str
    multi_user: bool
    version: str

    @property
    def supported(self) -> bool | None:
        """Whether the version is at least MINIMUM_BACKEND; None when the server does not say."""
        version, minimum = _version(self.version), _version(MINIMUM_BACKEND)
        return None if version is None or minimum is None else version >= minimum

    def require_supported(self) -> None:
        """Refuse an older backend; warn and go on when its version cannot be read."""
        if self.supported is None:
            _log.warning(
                "warning: the KFP API at %s does not report its version (tag_name %r); kubetune needs "
                "Kubeflow Pipelines >= %s and goes on assuming it",
                self.host,
                self.version,
                MINIMUM_BACKEND,
            )
        elif not self.supported:
            raise KfpError(
                f"KFP API at {self.host} runs Kubeflow Pipelines {self.version}, but kubetune's pipelines "
                f"need >= {MINIMUM_BACKEND} (the platform-spec fields their steps carry); "
                "upgrade Kubeflow Pipelines or point --host / KUBETUNE_KFP_HOST at a newer one"
            )


def token_file() -> Path | None:
    """The projected ServiceAccount token for the KFP API, when this pod has one."""
    path = Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH)
    return path if path.is_file() else None


def resolve_namespace(explicit: str | None = None) -> str | None:
    """--namespace, else KUBETUNE_NAMESPACE, else the pod's own namespace, else None."""
    if explicit:
        return explicit
    if os.environ.get(NAMESPACE_ENV):
        return os.environ[NAMESPACE_ENV]
    try:
        return Path(POD_NAMESPACE_FILE).read_text().strip() or None
    except OSError:
        return None


def _reason(error: Exception) -> str:
    """The server's own message for a refused request (never a header, so never the token)."""
    status, body = getattr(error, "status", None), getattr(error, "body", None)
    if status is not None:
        try:
            payload = json.loads(body or "{}")
            message = payload.get("message") or payload.get("error_message") or ""
        except (ValueError, AttributeError):
            message = str(body or "")
        return f"HTTP {status} {getattr(error, 'reason', '')}: {message}"[:300]
    return str(getattr(error, "reason", None) or str(error).splitlines()[0])[:300]


def _fix(error: Exception) -> str:
    status = getattr(error, "status", None)
    if status == 400 and "namespace" in str(getattr(error, "body", "")):
        return NAMESPACE_FIX
    if status == 401:
        return (
            f"the API wants a ServiceAccount token: run in a pod with the PodDefault that mounts it, "
            f"or set {TOKEN_PATH_ENV} to a token file"
        )
    if status == 403:
        return f"this account may not use that namespace: {NAMESPACE_FIX} where it is a contributor"
    if status is not None and 400 <= status < 500:
        return (
            f"the server refused the request as quoted; check that Kubeflow Pipelines is >= {MINIMUM_BACKEND} "
            "and that --host / KUBETUNE_KFP_HOST is the API of the intended cluster"
        )
    return "check --host / KUBETUNE_KFP_HOST and that the API is reachable"


def call(host: str, what: str, function, /, *args, **kwargs):
    """Run one client call; a refused request or an unreachable host becomes a KfpError naming the endpoint,
    the server's reason and the fix. Anything else is a bug here, not the host's, and propagates as itself."""
    try:
        return function(*args, **kwargs)
    except Exception as error:
        if not _host_problem(error):
            raise
        raise KfpError(f"KFP API at {host} failed to {what}: {_reason(error)}. Fix: {_fix(error)}.") from None


def _host_problem(error: Exception) -> bool:
    """The API refused (any HTTP status), the host was unreachable (urllib3's connection, TLS and URL errors,
    socket errors), or kfp.Client found nothing, or too much, under a name on the server."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ValueError) and not isinstance(error, HTTPError):
        return bool(KFP_LOOKUP_ERROR.match(str(error)))
    return isinstance(error, (ApiException, HTTPError, OSError))


def connect(host: str, namespace: str | None = None):
    """A kfp.Client for ``host`` that sends the ServiceAccount token when the pod has one.

    kfp 2.17 applies ServiceAccountTokenVolumeCredentials only when no host is given
    (kfp/client/client.py@2.17.0, Client._load_config), so the gateway passes them itself. Given a
    namespace, kfp.Client skips its own healthz probe and never writes its context file (Client.__init__).
    """
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    token = token_file()
    credentials = ServiceAccountTokenVolumeCredentials(str(token)) if token else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return call(host, "connect", kfp.Client, host=host, credentials=credentials, namespace=namespace or "kubeflow")


def probe_backend(client, host: str) -> Backend:
    """Read mode and version from GET /apis/v2beta1/healthz (backend/src/apiserver/main.go@2.17.0).

    The generated model drops ``tag_name``, so the raw JSON is read through the client's own healthz API.
    """
    response = call(
        host, "read /apis/v2beta1/healthz", client._healthz_api.healthz_service_get_healthz, _preload_content=False
    )
    try:
        health = json.loads(response.data)
    except ValueError:
        raise KfpError(
            f"KFP API at {host} answered /apis/v2beta1/healthz with something that is not JSON; "
            "check that --host / KUBETUNE_KFP_HOST points at the ml-pipeline API (port 8888)"
        ) from None
    return Backend(host, bool(health.get("multi_user")), str(health.get("tag_name") or "unknown"))


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "stringValue": name}]})


class KfpGateway:
    """One KFP API endpoint, in the namespace this user works in (multi-user mode) or none (single-user)."""

    def __init__(self, host: str, *, namespace: str | None = None):
        self.host = host
        resolved = resolve_namespace(namespace)
        self._client = connect(host, resolved)
        self.backend = probe_backend(self._client, host)
        self.namespace = self._namespace(resolved)

    def _namespace(self, resolved: str | None) -> str | None:
        # Single-user servers replace any namespace by "" (ResourceManager.ReplaceNamespace,
        # backend/src/apiserver/resource/resource_manager.go@2.17.0); multi-user ones refuse an empty one
        # (canAccessExperiment, backend/src/apiserver/server/experiment_server.go@2.17.0).
        if not self.backend.multi_user:
            return None
        if not resolved:
            raise KfpError(
                f"KFP API at {self.host} runs in multi-user mode and needs a namespace, "
                f"but none was given: {NAMESPACE_FIX}"
            )
        return resolved

    def _call(self, what: str, function, /, *args, **kwargs):
        return call(self.host, what, function, *args, **kwargs)

    def _experiment_id(self, name: str) -> str:
        try:
            return self._client.get_experiment(experiment_name=name, namespace=self.namespace).experiment_id
        except ValueError as error:
            # kfp 2.17 signals "not found" only by this message (kfp/client/client.py@2.17.0, create_experiment).
            if not str(error).startswith("No experiment is found with name"):
                raise
        return self._call(
            "create the experiment", self._client.create_experiment, name, namespace=self.namespace
        ).experiment_id

    def find_run(self, experiment_id: str, run_name: str) -> str | None:
        runs = self._call("list runs", self._client.list_runs, experiment_id=experiment_id, filter=_by_name(run_name))
        return runs.runs[0].run_id if runs.runs else None

    def runs(self, experiment_name: str) -> list[RunInfo]:
        """Every run of the KFP experiment, page by page (the server returns at most 200 at a time)."""
        experiment_id = self._call(f"find experiment {experiment_name!r}", self._experiment_id, experiment_name)
        found, token = [], ""
        while True:
            page = self._call(
                "list runs", self._client.list_runs, experiment_id=experiment_id, page_size=200, page_token=token
            )
            found += [RunInfo(r.display_name, r.run_id, str(r.state or "")) for r in page.runs or ()]
            token = page.next_page_token
            if not token:
                return found

    def submit(
        self, package: str, *, experiment_name: str, run_name: str, arguments: dict, service_account: str | None = None
    ) -> Submission:
        """Start the run unless a run of that name already exists in the KFP experiment."""
        self.backend.require_supported()
        experiment_id = self._call(f"find experiment {experiment_name!r}", self._experiment_id, experiment_name)
        existing = self.find_run(experiment_id, run_name)
        if existing:
            return Submission(existing, run_name, created=False)
        result = self._call(
            "create the run",
            self._client.create_run_from_pipeline_package,
            package,
            arguments=arguments,
            run_name=run_name,
            experiment_id=experiment_id,
            service_account=service_account,
        )
        return Submission(result.run_id, run_name, created=True)

    def _pipeline_id(self, name: str) -> str | None:
        # client.get_pipeline_id lists shared pipelines only; a namespaced one is listed in its namespace.
        found = self._call(
            "look up the pipeline", self._client.list_pipelines, filter=_by_name(name), namespace=self.namespace
        )
        return found.pipelines[0].pipeline_id if found.pipelines else None

    def register_pipeline(self, package: str, *, name: str, version: str) -> tuple[str, bool]:
        """Upload ``package`` as pipeline ``name`` version ``version``; returns (pipeline id, created).

        In multi-user mode the pipeline lives in the namespace: its defaults name that namespace's Secret,
        and an upload without one would be shared with every namespace
        (backend/src/apiserver/server/pipeline_upload_server.go@2.17.0, canUploadVersionedPipeline).
        """
        self.backend.require_supported()
        pipeline_id = self._pipeline_id(name)
        if pipeline_id is None:
            pipeline = self._call(
                "upload the pipeline",
                self._client.upload_pipeline,
                package,
                pipeline_name=name,
                namespace=self.namespace,
            )
            pipeline_id = pipeline.pipeline_id
        versions = self._call(
            "list pipeline versions", self._client.list_pipeline_versions, pipeline_id, filter=_by_name(version)
        )
        if versions.pipeline_versions:
            return pipeline_id, False
        self._call(
            "upload the pipeline version",
            self._client.upload_pipeline_version,
            package,
            pipeline_version_name=version,
            pipeline_id=pipeline_id,
        )
        return pipeline_id, True
