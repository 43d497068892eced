"""`kubetune doctor`: is this cluster ready to run kubetune's pipelines? One small function per check.

Each check returns what it found, raises ``Problem`` with what to do, or returns None when it does
not apply. The KFP checks run first and share what healthz said (mode, version); the Kubernetes checks
look at the namespace the runs use. An unknown backend version passes with a warning, as ``submit``
goes on in that case too. `helm test` runs this in a pod with the chart's ConfigMap and Secret as env.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubetune import kfp_api
from kubetune.errors import UserError
from kubetune.kube import KubeApi, Permission
from kubetune.spec import Experiment

__all__ = ["CHECKS", "Check", "Context", "Problem", "run_checks"]

SECRET_ENV, DEFAULT_SECRET = "KUBETUNE_CREDENTIALS_SECRET", "kubetune-credentials"
CONFIG_MAP_ENV, DEFAULT_CONFIG_MAP = "KUBETUNE_CONFIG_MAP", "kubetune-config"
SERVICE_ACCOUNT_ENV = "KUBETUNE_SERVICE_ACCOUNT"
# A run without an account gets the API server's default: pipeline-runner (common/const.go@2.17.0), which
# multi-user installs set to default-editor (manifests/kustomize/base/installs/multi-user/api-service/params.env@2.17.0).
DEFAULT_RUN_ACCOUNT = {False: "pipeline-runner", True: "default-editor"}
# What a run's driver, launcher and Argo executor do with the run's account: read the launcher ConfigMap
# and the artifact Secret (backend/src/v2/config/env.go@2.17.0), record task results
# (manifests/kustomize/base/pipeline/pipeline-runner-role.yaml@2.17.0).
RUN_PERMISSIONS = (
    Permission("get", "configmaps", name="kfp-launcher"),
    Permission("get", "secrets", name="mlpipeline-minio-artifact"),
    Permission("create", "workflowtaskresults", "argoproj.io"),
    Permission("patch", "workflowtaskresults", "argoproj.io"),
)
TIMEOUT_SECONDS = 5


class Problem(UserError):
    """A failed check: what was found and what to do."""

    def __init__(self, detail: str, fix: str = ""):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok' if self.ok else 'FAIL':<4}  {self.name}: {self.detail}"
        return f"{text.rstrip('.')}. Fix: {self.fix}" if self.fix else text


@dataclass
class Context:
    """What the checks share: the endpoints asked about, and what earlier checks found."""

    host: str | None
    namespace: str | None
    experiment: Experiment | None = None
    backend: kfp_api.Backend | None = None
    kfp_client: Any = field(default=None, repr=False)  # a kfp.Client (kfp ships no type information)
    _kube: KubeApi | None = field(default=None, repr=False)

    def kube(self) -> KubeApi:
        if self._kube is None:
            self._kube = KubeApi()
        return self._kube

    def need_host(self) -> str:
        if not self.host:
            raise Problem("skipped: no KFP API host")
        return self.host

    def need_namespace(self) -> str:
        if not self.namespace:
            raise Problem("skipped: no namespace", kfp_api.NAMESPACE_FIX)
        return self.namespace

    def need_backend(self) -> kfp_api.Backend:
        if self.backend is None:
            raise Problem("skipped: the KFP API did not answer")
        return self.backend


def kfp_reachable(context: Context) -> str:
    if not context.host:
        raise Problem(
            "no KFP API host", "pass --host or set KUBETUNE_KFP_HOST (e.g. http://ml-pipeline.kubeflow.svc:8888)"
        )
    context.kfp_client = kfp_api.connect(context.host, context.namespace)
    context.backend = kfp_api.probe_backend(context.kfp_client, context.host)
    return f"{context.host} answers"


def backend_version(context: Context) -> str:
    backend = context.need_backend()
    if backend.supported is None:
        return f"warning: version unknown (tag_name {backend.version!r}); kubetune needs >= {kfp_api.MINIMUM_BACKEND}"
    if not backend.supported:
        raise Problem(
            f"Kubeflow Pipelines {backend.version} is older than {kfp_api.MINIMUM_BACKEND}",
            f"upgrade Kubeflow Pipelines to {kfp_api.MINIMUM_BACKEND} or later",
        )
    return f"{backend.version} (>= {kfp_api.MINIMUM_BACKEND})"


def kfp_mode(context: Context) -> str:
    return "multi-user (profiles)" if context.need_backend().multi_user else "single-user"


def kfp_token(context: Context) -> str:
    token = kfp_api.token_file()
    if not context.need_backend().multi_user:
        return "not needed in single-user mode" + (f" (found {token})" if token else "")
    if token is None:
        path = os.environ.get(kfp_api.TOKEN_PATH_ENV) or kfp_api.DEFAULT_TOKEN_PATH
        raise Problem(
            f"no ServiceAccount token at {path}",
            'label the pod access-ml-pipeline: "true" so Kubeflow\'s PodDefault mounts it, '
            f"or set {kfp_api.TOKEN_PATH_ENV}",
        )
    return f"found {token}"


def namespace_known(context: Context) -> str:
    if not context.namespace:
        raise Problem("none given, and this is not a pod that knows its own", kfp_api.NAMESPACE_FIX)
    return context.namespace


def kfp_access(context: Context) -> str:
    """List one experiment as submit would: proves the token and the namespace work together."""
    namespace = context.need_namespace() if context.need_backend().multi_user else None
    kfp_api.call(
        context.need_host(), "list experiments", context.kfp_client.list_experiments, page_size=1, namespace=namespace
    )
    return f"may list experiments in {namespace}" if namespace else "may list experiments"


def _object(context: Context, kind: str, env: str, default: str) -> str:
    namespace, name = context.need_namespace(), os.environ.get(env) or default
    if not context.kube().exists(kind, namespace, name):
        raise Problem(
            f"{kind} {name} not found in namespace {namespace}",
            f"install the kubetune chart in {namespace}, or set {env} to the {kind} you created",
        )
    return f"{namespace}/{name} exists"


def credentials_secret(context: Context) -> str:
    return _object(context, "secret", SECRET_ENV, DEFAULT_SECRET)


def config_map(context: Context) -> str:
    return _object(context, "configmap", CONFIG_MAP_ENV, DEFAULT_CONFIG_MAP)


def _run_account(context: Context) -> str:
    return os.environ.get(SERVICE_ACCOUNT_ENV) or DEFAULT_RUN_ACCOUNT[context.need_backend().multi_user]


def run_account(context: Context) -> str:
    namespace, name = context.need_namespace(), _run_account(context)
    if not context.kube().exists("serviceaccount", namespace, name):
        raise Problem(
            f"ServiceAccount {name} not found in namespace {namespace}",
            f"create it, or set {SERVICE_ACCOUNT_ENV} to the account runs use (empty: KFP's default)",
        )
    return f"{namespace}/{name} exists"


def run_permissions(context: Context) -> str:
    namespace, name = context.need_namespace(), _run_account(context)
    missing = [str(p) for p in RUN_PERMISSIONS if not context.kube().may(namespace, name, p)]
    if missing:
        raise Problem(
            f"ServiceAccount {namespace}/{name} may not: {', '.join(missing)}",
            "bind it to KFP's pipeline-runner Role (standalone) or use the profile's default-editor",
        )
    return f"{namespace}/{name} may " + ", ".join(str(p) for p in RUN_PERMISSIONS)


def gpu_nodes(context: Context) -> str | None:
    if context.experiment is None or not context.experiment.spec.trial.resources.gpu:
        return None
    resources = context.experiment.spec.trial.resources
    nodes = context.kube().allocatable(resources.gpu_type)
    if not any(count >= resources.gpu for count in nodes.values()):
        raise Problem(
            f"no node has {resources.gpu} allocatable {resources.gpu_type} (found {nodes or 'none'})",
            "add GPU nodes with the device plugin, or lower spec.trial.resources.gpu",
        )
    return ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items()))


def study_database(context: Context) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from kubetune.redaction import redact_url
    from kubetune.storage import describe_error

    url = os.environ.get("KUBETUNE_STORAGE")
    fix = "set KUBETUNE_STORAGE (the pipeline Secret) to a reachable database, e.g. postgresql+psycopg://user:***@host:5432/optuna"
    if not url:
        raise Problem("KUBETUNE_STORAGE is not set", fix)
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise Problem(f"no SQLite file at {parsed.database}", fix)
        arguments = {} if parsed.get_backend_name() == "sqlite" else {"connect_timeout": TIMEOUT_SECONDS}
        with create_engine(url, connect_args=arguments).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Problem:
        raise
    except Exception as error:  # noqa: BLE001 - drivers raise many types; the description is scrubbed
        raise Problem(f"cannot open {redact_url(url)}: {describe_error(error, url)}", fix) from None
    return f"{redact_url(url)} answers"


def storage_proxy(context: Context) -> str | None:
    """Both ports of the storage proxy the steps use, when they use one (``KUBETUNE_STORAGE_PROXY``)."""
    import grpc

    from kubetune.grpc_storage import SCHEME, parse_proxy_url
    from kubetune.suggest_client import suggest_url

    url = os.environ.get("KUBETUNE_STORAGE_PROXY")
    if not url:
        return None
    fix = (
        "check the kubetune-storage-proxy Deployment (storageProxy.enabled in the chart) and its log, or set "
        'KUBETUNE_STORAGE_PROXY to "" so that the steps open KUBETUNE_STORAGE directly'
    )
    try:
        parse_proxy_url(url)
    except ValueError as error:
        raise Problem(str(error), fix) from None
    for what, address in (("storage proxy", url), ("suggest service", suggest_url(url))):
        with grpc.insecure_channel(address.removeprefix(SCHEME)) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT_SECONDS)
            except grpc.FutureTimeoutError:
                raise Problem(f"the {what} at {address} does not answer within {TIMEOUT_SECONDS} s", fix) from None
    return f"{url} and its suggest service answer"


def _public(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def mlflow_server(context: Context) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    fix = "set MLFLOW_TRACKING_URI (the chart's ConfigMap) to the MLflow server, e.g. http://kubetune-mlflow:5000"
    if not uri:
        raise Problem("MLFLOW_TRACKING_URI is not set", fix)
    if not uri.startswith(("http://", "https://")):
        return f"local store {_public(uri)}"
    health = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        raise Problem(f"{_public(health)} does not answer: {getattr(error, 'reason', error)}", fix) from None
    if status != 200:
        raise Problem(f"{_public(health)} answered HTTP {status}", fix)
    return f"{_public(uri)} answers"


CHECKS = {
    "KFP API": kfp_reachable,
    "KFP version": backend_version,
    "KFP mode": kfp_mode,
    "KFP token": kfp_token,
    "namespace": namespace_known,
    "KFP access": kfp_access,
    "credentials Secret": credentials_secret,
    "ConfigMap": config_map,
    "run ServiceAccount": run_account,
    "run permissions": run_permissions,
    "GPU nodes": gpu_nodes,
    "study database": study_database,
    "storage proxy": storage_proxy,
    "MLflow": mlflow_server,
}


def run_checks(context: Context) -> list[Check]:
    """Every check in order; a boundary's UserError (unreachable API, refusal) fails that check only."""
    results = []
    for name, check in CHECKS.items():
        try:
            detail = check(context)
        except Problem as problem:
            results.append(Check(name, False, problem.detail, problem.fix))
            continue
        except UserError as error:
            results.append(Check(name, False, str(error)))
            continue
        if detail is not None:
            results.append(Check(name, True, detail))
    return results
