"""The Helm chart: lint, render every scenario, validate every object, and check what it promises."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import deploy_support as ds
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from kubetune.suggest_client import suggest_port, suggest_url

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ----------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(ds.CHART, ds.ci_values(scenario), strict=True, namespace=ds.NAMESPACE, kube_version="v1.30.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not findings, findings or report["errors"]


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    # The lint test above can fail: a template error is reported as an error finding.
    broken = tmp_path / "kubetune"
    shutil.copytree(ds.CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.deeper }\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"]


# ------------------------------------------------------------------------------------------ rendering


def test_every_scenario_renders(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    assert set(scenario_objects) == {
        "dashboard-values",
        "default-values",
        "existing-secrets-values",
        "experiments-values",
        "external-db-values",
        "gpu-values",
        "multiuser-istio-values",
        "production-values",
    }
    for name, objs in scenario_objects.items():
        kinds = {o["kind"] for o in objs}
        assert {
            "Deployment",
            "ConfigMap",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "NetworkPolicy",
            "Job",
            "Pod",
        } <= kinds, name
        for obj in objs:
            assert DNS_LABEL.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63, obj["metadata"][
                "name"
            ]
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == ds.RELEASE
            assert obj["metadata"]["labels"]["helm.sh/chart"] == "kubetune-0.1.0"


def test_default_stack(default_objects: list[dict[str, Any]]) -> None:
    objs = default_objects
    ds.one(objs, "StatefulSet", "kubetune-postgresql")
    ds.one(objs, "StatefulSet", "kubetune-minio")
    ds.one(objs, "Deployment", "kubetune-mlflow")
    assert not ds.find(objs, "Deployment", "kubetune-dashboard"), "the dashboard is off by default"
    assert {s["metadata"]["name"] for s in ds.find(objs, "Secret")} == {"kubetune-passwords", "kubetune-credentials"}
    config = ds.one(objs, "ConfigMap", "kubetune-config")["data"]
    assert config == {
        "MLFLOW_TRACKING_URI": f"http://kubetune-mlflow.{ds.NAMESPACE}.svc:5000",
        "KUBETUNE_S3_ENDPOINT": f"http://kubetune-minio.{ds.NAMESPACE}.svc:9000",
        "MLFLOW_S3_ENDPOINT_URL": f"http://kubetune-minio.{ds.NAMESPACE}.svc:9000",
        "KUBETUNE_S3_BUCKET": "kubetune",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "KUBETUNE_KFP_HOST": "http://ml-pipeline.kubeflow.svc:8888",
        "KUBETUNE_IMAGE": "ghcr.io/kubetune/runtime:0.1.0",
        "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer-cuda:0.1.0",
        "KUBETUNE_CONFIG_MAP": "kubetune-config",
        "KUBETUNE_CREDENTIALS_SECRET": "kubetune-credentials",
        "KUBETUNE_NAMESPACE": ds.NAMESPACE,
        "KUBETUNE_SERVICE_ACCOUNT": "",
        "KUBETUNE_IMAGE_PULL_SECRETS": "",
        "KUBETUNE_GPU_NODE_SELECTOR": "{}",
        "KUBETUNE_GPU_TOLERATIONS": "[]",
        "KUBETUNE_STORAGE_PROXY": f"grpc://kubetune-storage-proxy.{ds.NAMESPACE}.svc:13000",
    }
    secret = ds.decoded_secret_values(objs)
    assert set(secret) == {
        "kubetune-passwords/postgres-password",
        "kubetune-passwords/minio-root-user",
        "kubetune-passwords/minio-root-password",
        "kubetune-credentials/KUBETUNE_STORAGE",
        "kubetune-credentials/AWS_ACCESS_KEY_ID",
        "kubetune-credentials/AWS_SECRET_ACCESS_KEY",
    }
    password = secret["kubetune-passwords/postgres-password"]
    assert len(password) >= 32
    assert secret["kubetune-credentials/KUBETUNE_STORAGE"] == (
        f"postgresql+psycopg://kubetune:{password}@kubetune-postgresql.{ds.NAMESPACE}.svc:5432/optuna"
    )
    assert secret["kubetune-credentials/AWS_ACCESS_KEY_ID"] == secret["kubetune-passwords/minio-root-user"]
    assert secret["kubetune-credentials/AWS_SECRET_ACCESS_KEY"] == secret["kubetune-passwords/minio-root-password"]
    init = ds.one(objs, "ConfigMap", "kubetune-postgresql-init")["data"]
    assert init == {"10-mlflow-database.sql": 'CREATE DATABASE "mlflow";\n'}


def test_fullname_follows_the_release_name() -> None:
    objs = ds.render_objects({}, name="search")
    names = {o["metadata"]["name"] for o in objs}
    assert {
        "search-kubetune-mlflow",
        "search-kubetune-config",
        "search-kubetune-credentials",
        "search-kubetune",
    } <= names
    config = ds.one(objs, "ConfigMap", "search-kubetune-config")["data"]
    assert config["KUBETUNE_CONFIG_MAP"] == "search-kubetune-config"
    assert config["KUBETUNE_CREDENTIALS_SECRET"] == "search-kubetune-credentials"
    assert config["KUBETUNE_SERVICE_ACCOUNT"] == "", "runs keep KFP's runner account"
    long_release = "a-very-long-release-name-for-kubetune-deployments"
    for obj in ds.render_objects({}, name=long_release):
        assert len(obj["metadata"]["name"]) <= 63


def test_mlflow_server(default_objects: list[dict[str, Any]]) -> None:
    deployment = ds.one(default_objects, "Deployment", "kubetune-mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/mlflow/mlflow:v3.17.2-full"
    assert container["command"] == ["mlflow", "server"]
    assert "--serve-artifacts" in container["args"]
    env = ds.env_of(container)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "s3://kubetune/mlflow"
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == (
        f"postgresql+psycopg://kubetune@kubetune-postgresql.{ds.NAMESPACE}.svc:5432/mlflow"
    )
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kubetune-passwords", "key": "postgres-password"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kubetune-passwords"
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"kubetune-mlflow:*", f"kubetune-mlflow.{ds.NAMESPACE}.svc:*", "localhost:*"} <= set(allowed)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_images_are_pinned(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    for objs in scenario_objects.values():
        for obj in ds.workloads(objs):
            for container in ds.containers(ds.pod_template(obj)["spec"]):
                image = container["image"]
                assert "@sha256:" in image or re.search(r":[^:/]*\d[^:/]*$", image), image
                assert not image.endswith(":latest"), image
    digest = "sha256:" + "a" * 64
    objs = ds.render_objects({"image": {"digest": digest}, "postgresql": {"image": {"digest": digest}}})
    assert ds.one(objs, "StatefulSet", "kubetune-postgresql")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"docker.io/library/postgres@{digest}"
    )
    assert (
        ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_IMAGE"] == f"ghcr.io/kubetune/runtime@{digest}"
    )


# ------------------------------------------------------------------------------- Kubernetes validation


def test_strict_validation_catches_mistakes(default_objects: list[dict[str, Any]]) -> None:
    # Guard: the validation below is not vacuous.
    broken = copy.deepcopy(ds.one(default_objects, "Deployment", "kubetune-mlflow"))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["requets"] = {"cpu": "1"}
    assert ds.validation_errors([broken], ["1.30.0"])


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_objects_pass_kubernetes_validate_strict(
    scenario: str, scenario_objects: dict[str, list[dict[str, Any]]]
) -> None:
    errors = ds.validation_errors(scenario_objects[scenario], ds.KUBE_VERSIONS)
    assert not errors, "\n".join(errors)


def test_supported_kubernetes_versions_are_shipped() -> None:
    shipped = set(kubernetes_validate.utils.all_versions())
    assert {v.rsplit(".", 1)[0] for v in ds.KUBE_VERSIONS} <= {v.rsplit(".", 1)[0] for v in shipped}
    chart = yaml.safe_load((ds.CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.30.0-0"


# ---------------------------------------------------------------------------------- security context


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_restricted_security_context_and_resources(
    scenario: str, scenario_objects: dict[str, list[dict[str, Any]]]
) -> None:
    problems = ds.security_problems(scenario_objects[scenario])
    assert not problems, "\n".join(problems)


def test_security_check_catches_a_weakened_pod() -> None:
    objs = ds.render_objects(
        {
            "mlflow": {"containerSecurityContext": {"allowPrivilegeEscalation": True, "readOnlyRootFilesystem": False}},
            "postgresql": {
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
            },
        }
    )
    problems = ds.security_problems(objs)
    assert any("kubetune-mlflow/mlflow: allowPrivilegeEscalation" in p for p in problems)
    assert any("kubetune-mlflow/mlflow: readOnlyRootFilesystem" in p for p in problems)


# ----------------------------------------------------------------------------------- network policies


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("scenario", ["default-values", "dashboard-values", "experiments-values"])
def test_network_policies_admit_only_the_access_label(
    scenario: str, scenario_objects: dict[str, list[dict[str, Any]]]
) -> None:
    objs = scenario_objects[scenario]
    policies = {p["metadata"]["name"]: p for p in ds.find(objs, "NetworkPolicy")}
    targets = {"kubetune-postgresql": [5432], "kubetune-minio": [9000], "kubetune-storage-proxy": [13000, 13001]}
    assert set(policies) == set(targets)
    for name, ports in targets.items():
        policy = policies[name]["spec"]
        selector = policy["podSelector"]["matchLabels"]
        selected = [
            o["metadata"]["name"]
            for o in ds.workloads(objs)
            if _matches(selector, ds.pod_template(o)["metadata"].get("labels", {}))
        ]
        assert selected == [name], f"{name} selects {selected}"
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"} for port in ports]
        for peer in rule["from"]:
            assert peer["podSelector"] == {"matchLabels": ds.ACCESS_LABEL}, peer
            assert "ipBlock" not in peer
        namespace_peers = [p for p in rule["from"] if "namespaceSelector" in p]
        if scenario == "dashboard-values":
            assert namespace_peers == [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
                    "podSelector": {"matchLabels": ds.ACCESS_LABEL},
                }
            ]
        else:
            assert namespace_peers == []

    labelled = {
        o["metadata"]["name"]
        for o in ds.workloads(objs)
        if _matches(ds.ACCESS_LABEL, ds.pod_template(o)["metadata"].get("labels", {}))
    }
    assert {"kubetune-mlflow", "kubetune-minio-make-bucket", "kubetune-test-connection"} <= labelled
    assert "kubetune-storage-proxy" in labelled, "the storage proxy reaches PostgreSQL"
    assert "kubetune-register-pipeline" not in labelled, "the registration Job only talks to KFP"
    assert "kubetune-postgresql" not in labelled and "kubetune-minio" not in labelled
    if scenario == "dashboard-values":
        assert "kubetune-dashboard" in labelled
    experiment_jobs = {
        j["metadata"]["name"] for j in ds.find(objs, "Job") if j["metadata"]["name"].startswith("kubetune-exp-")
    }
    assert not experiment_jobs & labelled, "the experiment Jobs only talk to KFP"
    if scenario == "experiments-values":
        assert experiment_jobs


def test_network_policies_can_be_disabled() -> None:
    assert not ds.find(ds.render_objects({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# ----------------------------------------------------------------------------------------------- RBAC


def test_rbac_is_minimal(default_objects: list[dict[str, Any]]) -> None:
    roles = {
        r["metadata"]["name"]: r for r in ds.find(default_objects, "Role") if r["metadata"]["name"] != "kubetune-doctor"
    }
    assert not ds.find(default_objects, "ClusterRole") and not ds.find(default_objects, "ClusterRoleBinding")
    for role in roles.values():  # the doctor's Role (a helm test hook) is checked in test_deploy_kubeflow.py
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["pipelines.kubeflow.org"], rule
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert not {"secrets", "configmaps", "pods", "pods/log"} & set(rule["resources"])
            assert set(rule["verbs"]) <= {"create", "get", "list"}
    runs = roles["kubetune-kfp-runs"]["rules"]
    assert {"create", "get", "list"} <= set(next(r for r in runs if "runs" in r["resources"])["verbs"])
    assert all("create" not in r["verbs"] for r in runs if "pipelines" in r["resources"]), (
        "pipeline pods do not create pipelines"
    )
    binding = ds.one(default_objects, "RoleBinding", "kubetune-kfp-runs")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": ds.NAMESPACE}]
    registrar = ds.one(default_objects, "RoleBinding", "kubetune-kfp-pipelines")
    assert registrar["subjects"][0]["name"] == "kubetune-registrar"
    job = ds.one(default_objects, "Job", "kubetune-register-pipeline")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kubetune-registrar"
    for sa in ds.find(default_objects, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


def test_multi_user_jobs_get_a_projected_kfp_token(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    job = ds.one(scenario_objects["dashboard-values"], "Job", "kubetune-register-pipeline")
    spec = job["spec"]["template"]["spec"]
    (token,) = [v for v in spec["volumes"] if v["name"] == "kfp-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    env = ds.env_of(spec["containers"][0])
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == "/var/run/secrets/kubeflow/pipelines/token"
    single = ds.one(scenario_objects["default-values"], "Job", "kubetune-register-pipeline")
    assert all(v["name"] != "kfp-token" for v in single["spec"]["template"]["spec"]["volumes"])


# --------------------------------------------------------------------------------- hooks, test, NOTES


def test_pipeline_registration_hook(default_objects: list[dict[str, Any]]) -> None:
    job = ds.one(default_objects, "Job", "kubetune-register-pipeline")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/kubetune/runtime:0.1.0"
    assert container["command"] == [
        "kubetune",
        "register-pipeline",
        "--host",
        "$(KUBETUNE_KFP_HOST)",
        "--name",
        "kubetune-search",
        "--version",
        "0.1.0-0.1.0",
    ]
    assert {"configMapRef": {"name": "kubetune-config"}} in container["envFrom"]
    assert not any("secretRef" in source for source in container["envFrom"]), "no credentials for the registration Job"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600 and job["spec"]["backoffLimit"] == 6
    bucket = ds.one(default_objects, "Job", "kubetune-minio-make-bucket")
    assert int(bucket["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert not ds.find(
        ds.render_objects({"kfp": {"registerPipeline": {"enabled": False}}}), "Job", "kubetune-register-pipeline"
    )


def test_helm_test_checks_database_and_mlflow(default_objects: list[dict[str, Any]]) -> None:
    pod = ds.one(default_objects, "Pod", "kubetune-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    checks = {c["name"]: c for c in pod["spec"]["containers"]}
    database = checks["check-database"]
    script = " ".join(database["args"])
    assert "pg_isready" in script and "SELECT 1" in script
    env = ds.env_of(database)
    assert env["PGHOST"]["value"] == f"kubetune-postgresql.{ds.NAMESPACE}.svc"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kubetune-passwords"
    mlflow = checks["check-mlflow"]
    assert mlflow["command"][0] == "python3" and '"/health"' in mlflow["command"][2]
    assert ds.env_of(mlflow)["MLFLOW_TRACKING_URI"]["value"] == "http://kubetune-mlflow:5000"


def test_notes_give_the_next_commands() -> None:
    notes = ds.render({"dashboard": {"enabled": True}})["kubetune/templates/NOTES.txt"]
    assert f"kubectl -n {ds.NAMESPACE} port-forward svc/kubetune-mlflow 5000:5000" in notes
    assert "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80" in notes
    assert "kubetune submit examples/digits.yaml --host http://localhost:8888" in notes
    assert "svc/kubetune-dashboard 8080:8080" in notes
    assert 'kubetune.io/access: "true"' in notes
    assert f"helm test {ds.RELEASE} -n {ds.NAMESPACE}" in notes


# ------------------------------------------------------------------------------ scenario specifics


def test_external_database(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    objs = scenario_objects["external-db-values"]
    assert not ds.find(objs, "StatefulSet", "kubetune-postgresql")
    assert not ds.find(objs, "Secret"), "all credentials come from existing Secrets"
    assert [p["metadata"]["name"] for p in ds.find(objs, "NetworkPolicy")] == [
        "kubetune-minio",
        "kubetune-storage-proxy",
    ]
    (container,) = ds.one(objs, "Deployment", "kubetune-mlflow")["spec"]["template"]["spec"]["containers"]
    env = ds.env_of(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == (
        "postgresql+psycopg://kubetune@postgres.databases.svc.cluster.local:5432/mlflow?sslmode=require"
    )
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kubetune-database", "key": "password"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "kubetune-minio", "key": "root-user"}
    assert (
        ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_CREDENTIALS_SECRET"]
        == "kubetune-pipeline-credentials"
    )


def test_existing_secrets(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    objs = scenario_objects["existing-secrets-values"]
    assert not ds.find(objs, "Secret")
    refs = set()
    for obj in ds.workloads(objs):
        for container in ds.containers(ds.pod_template(obj)["spec"]):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    refs.add((source["secretRef"]["name"], "*"))
    assert {name for name, _ in refs} == {"kubetune-credentials"}
    assert ("kubetune-credentials", "postgres-password") in refs
    assert ("kubetune-credentials", "AWS_SECRET_ACCESS_KEY") in refs


def test_gpu_cluster_settings(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    values = ds.ci_values("gpu-values")
    data = ds.one(scenario_objects["gpu-values"], "ConfigMap", "kubetune-config")["data"]
    assert json.loads(data["KUBETUNE_GPU_NODE_SELECTOR"]) == values["trial"]["gpuNodeSelector"]
    assert json.loads(data["KUBETUNE_GPU_TOLERATIONS"]) == values["trial"]["gpuTolerations"]
    assert data["KUBETUNE_IMAGE_PULL_SECRETS"].split() == ["registry-example-com"]
    trainer = values["trainerImage"]
    assert (
        data["KUBETUNE_TRAINER_IMAGE"]
        == f"{trainer['repository']}:{trainer['tag']}"
        == ("registry.example.com/ml/kubetune-trainer-cuda:0.1.0")
    )
    assert data["KUBETUNE_IMAGE"] == "ghcr.io/kubetune/runtime:0.1.0"
    assert data["KUBETUNE_SERVICE_ACCOUNT"] == ""
    assert data["KUBETUNE_CONFIG_MAP"] == "kubetune-config"
    assert data["KUBETUNE_CREDENTIALS_SECRET"] == "kubetune-credentials"
    empty = ds.one(scenario_objects["default-values"], "ConfigMap", "kubetune-config")["data"]
    assert (json.loads(empty["KUBETUNE_GPU_NODE_SELECTOR"]), json.loads(empty["KUBETUNE_GPU_TOLERATIONS"])) == ({}, [])
    assert empty["KUBETUNE_IMAGE_PULL_SECRETS"] == ""
    pull = ds.one(scenario_objects["gpu-values"], "Deployment", "kubetune-mlflow")["spec"]["template"]["spec"][
        "imagePullSecrets"
    ]
    assert pull == [{"name": "registry-example-com"}]


def test_image_pull_secrets_for_pipeline_pods() -> None:
    # trial.imagePullSecrets first, then the chart-wide ones (the steps run the runtime image too), no duplicates.
    objs = ds.render_objects(
        {"imagePullSecrets": ["chart-registry", "shared"], "trial": {"imagePullSecrets": ["gpu-registry", "shared"]}}
    )
    data = ds.one(objs, "ConfigMap", "kubetune-config")["data"]
    assert data["KUBETUNE_IMAGE_PULL_SECRETS"] == "gpu-registry shared chart-registry"
    only_chart = ds.one(ds.render_objects({"imagePullSecrets": ["chart-registry"]}), "ConfigMap", "kubetune-config")[
        "data"
    ]
    assert only_chart["KUBETUNE_IMAGE_PULL_SECRETS"] == "chart-registry"


def test_no_trial_defaults_configmap(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    # The CLI reads env only: the former `<fullname>-trial-defaults` ConfigMap and its env var are gone.
    for name, objs in scenario_objects.items():
        assert not [o for o in ds.find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-trial-defaults")], name
        assert "TRIAL_DEFAULTS" not in json.dumps(objs), name
    rendered = ds.render({"dashboard": {"enabled": True}, "kfp": {"multiUser": True}})
    assert not any("trial-defaults" in text or "TRIAL_DEFAULTS" in text for text in rendered.values())
    for path in [*ds.CHART.rglob("*"), *ds.MANIFESTS.rglob("*")]:
        if path.is_file() and path.suffix in (".yaml", ".yml", ".tpl", ".txt", ".md", ".json", ".py"):
            text = path.read_text()
            assert "TRIAL_DEFAULTS" not in text and "trial-defaults" not in text and "trialDefaults" not in text, path


@pytest.mark.parametrize("scenario", ["default-values", "gpu-values", "experiments-values", "dashboard-values"])
def test_cli_jobs_load_the_settings_as_env(scenario: str, scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    """register-pipeline and submit run the CLI, which reads its cluster settings from env (no ConfigMap reads)."""
    objs = scenario_objects[scenario]
    jobs = [
        j
        for j in ds.find(objs, "Job")
        if j["metadata"]["name"] == "kubetune-register-pipeline" or j["metadata"]["name"].startswith("kubetune-exp-")
    ]
    assert jobs
    multi_user = bool(ds.ci_values(scenario).get("kfp", {}).get("multiUser"))
    for job in jobs:
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["command"][0] == "kubetune"
        assert container["envFrom"] == [{"configMapRef": {"name": "kubetune-config"}}], (
            "the settings, and no credentials"
        )
        env = ds.env_of(container)
        assert not any("valueFrom" in entry for entry in env.values()), "no Secret values"
        assert "KUBETUNE_TRIAL_DEFAULTS" not in env
        assert ("KF_PIPELINES_SA_TOKEN_PATH" in env) is multi_user
        assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", ["default-values", "gpu-values"])
@pytest.mark.parametrize("command", ["submit", "register-pipeline"])
def test_cli_reads_the_configmap_as_env(
    command: str, scenario: str, scenario_objects: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cluster setting of the CLI has its key in the ConfigMap, and the CLI parses the rendered values."""
    from kubetune.cli import cli

    data = ds.one(scenario_objects[scenario], "ConfigMap", "kubetune-config")["data"]
    cmd = cli.commands[command]
    envvars = {p.envvar for p in cmd.params if isinstance(p.envvar, str) and p.envvar.startswith("KUBETUNE_")}
    assert envvars - {"KUBETUNE_HOME"} <= set(data), envvars - set(data)
    for name in envvars:
        monkeypatch.delenv(name, raising=False)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    args = ["spec.yaml"] if command == "submit" else ["--version", "0.1.0-0.1.0"]
    with cmd.make_context(command, args) as ctx:
        params = ctx.params
    values = ds.ci_values(scenario)
    assert params["host"] == data["KUBETUNE_KFP_HOST"]
    assert params["image"] == data["KUBETUNE_IMAGE"] and params["trainer_image"] == data["KUBETUNE_TRAINER_IMAGE"]
    assert (params["secret"], params["config_map"]) == ("kubetune-credentials", "kubetune-config")
    assert not params["service_account"], "an empty KUBETUNE_SERVICE_ACCOUNT leaves the run's account to KFP"
    assert (params["gpu_node_selector"] or {}) == values.get("trial", {}).get("gpuNodeSelector", {})
    assert list(params["gpu_tolerations"] or []) == values.get("trial", {}).get("gpuTolerations", [])
    assert list(params["image_pull_secrets"]) == values.get("trial", {}).get("imagePullSecrets", [])


def test_dashboard(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    objs = scenario_objects["dashboard-values"]
    deployment = ds.one(objs, "Deployment", "kubetune-dashboard")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/kubetune/runtime:0.1.0"
    assert container["command"][0] == "optuna-dashboard"
    env = ds.env_of(container)
    assert (
        env["DASHBOARD_STORAGE"]["value"]
        == f"postgresql+psycopg://kubetune@kubetune-postgresql.{ds.NAMESPACE}.svc:5432/optuna"
    )
    assert "valueFrom" in env["PGPASSWORD"]
    ds.one(objs, "Service", "kubetune-dashboard")
    assert ds.one(objs, "Deployment", "kubetune-mlflow")["spec"]["replicas"] == 2
    assert "mlflow.example.com" in ds.env_of(
        ds.one(objs, "Deployment", "kubetune-mlflow")["spec"]["template"]["spec"]["containers"][0]
    )["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")


def test_storage_proxy(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    """On by default: a Deployment and Service of the proxy, the steps' URL in the ConfigMap, a PDB in production."""
    objs = scenario_objects["default-values"]
    deployment = ds.one(objs, "Deployment", "kubetune-storage-proxy")
    (container,) = ds.pod_template(deployment)["spec"]["containers"]
    assert container["image"] == "ghcr.io/kubetune/runtime:0.1.0"
    assert container["command"][:3] == ["python3", "-m", "kubetune.storage_proxy"]
    env = ds.env_of(container)
    database = f"postgresql+psycopg://kubetune@kubetune-postgresql.{ds.NAMESPACE}.svc:5432/optuna"
    assert env["KUBETUNE_STORAGE"]["value"] == database, "no password in the URL"
    assert "valueFrom" in env["PGPASSWORD"]
    assert container["readinessProbe"]["tcpSocket"]["port"] == "grpc"
    assert container["ports"] == [
        {"name": "grpc", "containerPort": 13000, "protocol": "TCP"},
        {"name": "suggest", "containerPort": suggest_port(13000), "protocol": "TCP"},
    ]
    assert container["command"][-2:] == ["--port", "13000"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = ds.one(objs, "Service", "kubetune-storage-proxy")["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("grpc", 13000, "grpc"),
        ("suggest", 13001, "suggest"),
    ]
    assert {p["appProtocol"] for p in service["ports"]} == {"grpc"}, "a mesh must route both as gRPC"
    assert _matches(service["selector"], ds.pod_template(deployment)["metadata"]["labels"])
    config = ds.one(objs, "ConfigMap", "kubetune-config")["data"]
    assert config["KUBETUNE_STORAGE_PROXY"] == f"grpc://kubetune-storage-proxy.{ds.NAMESPACE}.svc:13000"
    assert suggest_url(config["KUBETUNE_STORAGE_PROXY"]).endswith(":13001"), "the steps find the suggest service"
    assert not ds.find(objs, "PodDisruptionBudget"), "one proxy: a PDB would block every node drain"

    production = scenario_objects["production-values"]
    deployment = ds.one(production, "Deployment", "kubetune-storage-proxy")
    assert deployment["spec"]["replicas"] == 2
    budget = ds.one(production, "PodDisruptionBudget", "kubetune-storage-proxy")["spec"]
    assert budget["minAvailable"] == 1
    assert _matches(budget["selector"]["matchLabels"], ds.pod_template(deployment)["metadata"]["labels"])


def test_storage_proxy_can_be_disabled() -> None:
    """Disabled: no proxy objects, and an empty KUBETUNE_STORAGE_PROXY leaves the steps on KUBETUNE_STORAGE."""
    objs = ds.render_objects({"storageProxy": {"enabled": False}})
    assert not [o for o in objs if "storage-proxy" in o["metadata"]["name"]]
    assert ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_STORAGE_PROXY"] == ""
