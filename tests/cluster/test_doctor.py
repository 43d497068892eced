"""`kubetune doctor` against the KFP double (both modes) and the Kubernetes API double: all pass, then
each check fails alone with its fix line and exit code 2."""

import contextlib
import json
import sqlite3
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from click.testing import CliRunner
from free_ports import free_port_and_next
from k8s_double import KubeApiDouble
from kfp_double import LocalJsonServer
from repo_paths import DIGITS

from kubetune import doctor
from kubetune import kfp_api as gateway
from kubetune.cli import cli


class MlflowHealth(LocalJsonServer):
    """Stands in for `mlflow server`'s /health."""

    def respond(self, method, path, headers, body):
        return (200, "OK") if (method, path) == ("GET", "/health") else (404, {})


@pytest.fixture
def cluster(kfp_api, isolated_pod, tmp_path, monkeypatch):
    """A cluster where every check passes: KFP, the namespace's objects, the run account's rights, a GPU
    node, a study database and MLflow."""
    namespace = kfp_api.namespace if kfp_api.multi_user else "kubeflow"
    if not kfp_api.multi_user:  # a standalone KFP pod knows its namespace from its ServiceAccount mount
        pod_file = isolated_pod / "namespace"
        pod_file.write_text(namespace)
        monkeypatch.setattr(gateway, "POD_NAMESPACE_FILE", str(pod_file))
    database = tmp_path / "optuna.db"
    sqlite3.connect(database).close()
    with KubeApiDouble() as kube, MlflowHealth() as mlflow:
        account = doctor.DEFAULT_RUN_ACCOUNT[kfp_api.multi_user]
        kube.objects |= {
            ("secrets", namespace, "kubetune-credentials"),
            ("configmaps", namespace, "kubetune-config"),
            ("serviceaccounts", namespace, account),
        }
        for permission in doctor.RUN_PERMISSIONS:
            kube.grant(
                namespace, account, permission.verb, permission.resource, permission.group, permission.name or ""
            )
        kube.nodes = {"cpu-1": {"cpu": "8"}, "gpu-1": {"cpu": "8", "nvidia.com/gpu": "2"}}
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", kube.kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setenv("KUBETUNE_KFP_HOST", kfp_api.host)
        monkeypatch.setenv("KUBETUNE_STORAGE", f"sqlite:///{database}")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.host)
        for name in ("KUBETUNE_SERVICE_ACCOUNT", "KUBETUNE_CREDENTIALS_SECRET", "KUBETUNE_CONFIG_MAP"):
            monkeypatch.delenv(name, raising=False)
        proxy_port = free_port_and_next()
        monkeypatch.setenv("KUBETUNE_STORAGE_PROXY", f"grpc://127.0.0.1:{proxy_port}")
        with _grpc_listening(proxy_port, proxy_port + 1):  # the proxy's storage and suggest ports
            yield kfp_api, kube, namespace, account


@pytest.fixture
def gpu_spec(tmp_path):
    data = yaml.safe_load(DIGITS.read_text())
    data["spec"]["trial"]["resources"]["gpu"] = 2
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _doctor(*args):
    return CliRunner().invoke(cli, ["doctor", *args])


def _line(result, name):
    (line,) = [line for line in result.output.splitlines() if line.split(":")[0].split("  ")[-1].strip() == name]
    return line


def test_a_ready_cluster_passes_every_check(cluster, gpu_spec):
    _kfp, kube, namespace, account = cluster
    result = _doctor(gpu_spec)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()] == ["ok"] * len(doctor.CHECKS)
    assert "gpu-1: 2" in _line(result, "GPU nodes") and f"{namespace}/{account}" in _line(result, "run permissions")
    reviews = [body for method, path, body in kube.requests if path.endswith("/localsubjectaccessreviews")]
    assert {r["spec"]["user"] for r in reviews} == {f"system:serviceaccount:{namespace}:{account}"}
    assert len(reviews) == len(doctor.RUN_PERMISSIONS)


def test_without_a_gpu_spec_the_gpu_check_is_left_out(cluster):
    result = _doctor()
    assert result.exit_code == 0 and "GPU nodes" not in result.output


BREAKS = {
    "KFP API": ("no KFP API host", "KUBETUNE_KFP_HOST"),
    "KFP version": ("older than 2.15.0", "upgrade Kubeflow Pipelines"),
    "namespace": ("none given", "KUBETUNE_NAMESPACE"),
    "credentials Secret": ("secret kubetune-credentials not found", "install the kubetune chart"),
    "ConfigMap": ("configmap kubetune-config not found", "KUBETUNE_CONFIG_MAP"),
    "run ServiceAccount": ("not found", "KUBETUNE_SERVICE_ACCOUNT"),
    "run permissions": ("may not: patch workflowtaskresults.argoproj.io", "pipeline-runner"),
    "GPU nodes": ("no node has 2 allocatable nvidia.com/gpu", "spec.trial.resources.gpu"),
    "study database": ("cannot open postgresql+psycopg://kt:***@127.0.0.1:1/optuna", "KUBETUNE_STORAGE"),
    "storage proxy": ("the storage proxy at grpc://127.0.0.1:1 does not answer", "KUBETUNE_STORAGE_PROXY"),
    "MLflow": ("does not answer", "MLFLOW_TRACKING_URI"),
}


def _break(name, cluster, monkeypatch):
    kfp, kube, namespace, account = cluster
    if name == "KFP API":
        monkeypatch.delenv("KUBETUNE_KFP_HOST")
    elif name == "KFP version":
        kfp.version = "2.14.4"
    elif name == "namespace":
        monkeypatch.delenv(gateway.NAMESPACE_ENV, raising=False)
        monkeypatch.setattr(gateway, "POD_NAMESPACE_FILE", "/nonexistent/namespace")
    elif name == "credentials Secret":
        kube.objects.discard(("secrets", namespace, "kubetune-credentials"))
    elif name == "ConfigMap":
        kube.objects.discard(("configmaps", namespace, "kubetune-config"))
    elif name == "run ServiceAccount":
        monkeypatch.setenv("KUBETUNE_SERVICE_ACCOUNT", "nobody")
    elif name == "run permissions":
        kube.grants.discard(
            (
                f"system:serviceaccount:{namespace}:{account}",
                namespace,
                "patch",
                "argoproj.io",
                "workflowtaskresults",
                "",
            )
        )
    elif name == "GPU nodes":
        kube.nodes.pop("gpu-1")
    elif name == "study database":
        monkeypatch.setenv("KUBETUNE_STORAGE", "postgresql+psycopg://kt:Pw-9f8e7d@127.0.0.1:1/optuna")
    elif name == "storage proxy":
        monkeypatch.setenv("KUBETUNE_STORAGE_PROXY", "grpc://127.0.0.1:1")
    elif name == "MLflow":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:Ml-s3cret@127.0.0.1:1")


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_failing_check_is_exit_2_with_its_fix(name, cluster, gpu_spec, monkeypatch):
    _break(name, cluster, monkeypatch)
    result = _doctor(gpu_spec)
    detail, fix = BREAKS[name]
    line = _line(result, name)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert line.startswith("FAIL") and detail in line.split("Fix:")[0] and fix in line.split("Fix:")[1]
    assert "Pw-9f8e7d" not in result.output and "Ml-s3cret" not in result.output
    assert "checks failed" in result.output


@contextlib.contextmanager
def _grpc_listening(*ports: int):
    """A real gRPC server (no services) listening on ``ports``."""
    import grpc

    server = grpc.server(ThreadPoolExecutor(1))
    for port in ports:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield
    finally:
        server.stop(None)


def test_the_storage_proxy_check_needs_both_its_ports(cluster, monkeypatch):
    port = free_port_and_next()
    monkeypatch.setenv("KUBETUNE_STORAGE_PROXY", f"grpc://127.0.0.1:{port}")
    with _grpc_listening(port):  # the storage port only: no suggest service
        line = _line(_doctor(), "storage proxy")
    assert line.startswith("FAIL") and f"suggest service at grpc://127.0.0.1:{port + 1} does not answer" in line
    with _grpc_listening(port, port + 1):
        result = _doctor()
    assert result.exit_code == 0, result.output
    assert _line(result, "storage proxy").startswith("ok")
    monkeypatch.setenv("KUBETUNE_STORAGE_PROXY", "")
    result = _doctor()
    assert result.exit_code == 0 and "storage proxy" not in result.output, "steps that open the database directly"


def test_a_multi_user_pod_without_token_fails_the_token_check(cluster, monkeypatch):
    kfp, *_ = cluster
    monkeypatch.setenv(gateway.TOKEN_PATH_ENV, "/nonexistent/token")
    result = _doctor()
    line = _line(result, "KFP token")
    if kfp.multi_user:
        assert result.exit_code == 2 and line.startswith("FAIL") and "access-ml-pipeline" in line
    else:
        assert result.exit_code == 0 and "not needed in single-user mode" in line


def test_an_unknown_backend_version_passes_with_a_warning(cluster):
    kfp, *_ = cluster
    kfp.version = "unknown"
    result = _doctor()
    assert result.exit_code == 0 and "warning: version unknown" in _line(result, "KFP version")


def test_a_doctor_account_that_may_not_read_secrets_fails_that_check_only(cluster):
    _, kube, *_ = cluster
    kube.forbidden.add(("get", "secrets"))
    result = _doctor()
    assert result.exit_code == 2 and "HTTP 403" in _line(result, "credentials Secret")
    assert _line(result, "ConfigMap").startswith("ok")


def test_without_kubernetes_configuration_the_kubernetes_checks_say_how_to_set_it(cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    result = _doctor()
    assert result.exit_code == 2 and "KUBECONFIG" in _line(result, "credentials Secret")
    assert _line(result, "KFP API").startswith("ok")


def _post(kube, path, body, token):
    request = urllib.request.Request(
        f"{kube.host}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_kubernetes_double_refuses_reviews_as_the_api_server_does():
    path = "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews"
    good = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "team-a"},
        "spec": {
            "user": "system:serviceaccount:team-a:x",
            "resourceAttributes": {"namespace": "team-a", "verb": "get", "resource": "secrets"},
        },
    }
    with KubeApiDouble() as kube:
        assert _post(kube, path, good, "wrong")[0] == 401
        assert _post(kube, path, good, kube.token) == (
            201,
            {**good, "status": {"allowed": False, "reason": "no RBAC policy matched"}},
        )
        other = {**good, "metadata": {"namespace": "team-b"}}
        assert _post(kube, path, other, kube.token)[0] == 400
        for spec in (
            {**good["spec"], "user": ""},
            {"user": "u"},
            {**good["spec"], "resourceAttributes": {**good["spec"]["resourceAttributes"], "namespace": ""}},
        ):
            status, body = _post(kube, path, {**good, "spec": spec}, kube.token)
            assert status == 422 and body["reason"] == "Invalid" and body["kind"] == "Status", spec


def test_a_token_the_api_does_not_accept_fails_the_access_check(cluster, tmp_path, monkeypatch):
    kfp, *_ = cluster
    token = tmp_path / "stale-token"
    token.write_text("stale-token-value")
    monkeypatch.setenv(gateway.TOKEN_PATH_ENV, str(token))
    result = _doctor()
    line = _line(result, "KFP access")
    if kfp.multi_user:
        assert (
            result.exit_code == 2 and line.startswith("FAIL") and "HTTP 401" in line and gateway.TOKEN_PATH_ENV in line
        )
        assert "stale-token-value" not in result.output
    else:
        assert result.exit_code == 0 and line.startswith("ok")
