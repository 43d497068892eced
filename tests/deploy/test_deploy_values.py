"""Chart values: the `fail` checks, the schema, experiment Job names, secrets kept and never leaked."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import deploy_support as ds
import helm_python as helm
import pytest
import yaml

EXPERIMENT = {
    "apiVersion": "kubetune/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "digits-cnn"},
    "spec": {
        "data": {"source": "builtin:digits"},
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "parameters": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "budget": {"maxTrials": 30},
    },
}


def experiment(name: str = "digits-cnn", **spec_changes: Any) -> dict[str, Any]:
    exp = copy.deepcopy(EXPERIMENT)
    exp["metadata"]["name"] = name
    exp["spec"].update(spec_changes)
    return exp


# --------------------------------------------------------------------------------------- fail checks

# (id, values, the message the chart's `fail` gives). Each case is a value combination that the schema
# accepts or cannot judge alone; the templates must stop it with a message naming what to change.
FAIL_CASES = [
    (
        "database-missing",
        {"postgresql": {"enabled": False}},
        "postgresql.enabled is false but externalDatabase.host is empty",
    ),
    (
        "database-twice",
        {"externalDatabase": {"host": "db.example.com"}},
        "postgresql.enabled is true and externalDatabase.host is set",
    ),
    (
        "external-database-without-secret",
        {"postgresql": {"enabled": False}, "externalDatabase": {"host": "db.example.com"}},
        "externalDatabase.existingSecret is empty",
    ),
    (
        "object-store-missing",
        {"minio": {"enabled": False}},
        "minio.enabled is false but externalS3.endpoint is empty",
    ),
    (
        "object-store-twice",
        {"externalS3": {"endpoint": "https://s3.example.com"}},
        "minio.enabled is true and externalS3.endpoint is set",
    ),
    (
        "external-s3-without-secret",
        {"minio": {"enabled": False}, "externalS3": {"endpoint": "https://s3.example.com"}},
        "externalS3.existingSecret is empty",
    ),
    (
        "pipeline-secret-missing",
        {"postgresql": {"auth": {"existingSecret": "pg"}}},
        "pipelineSecret.existingSecret is empty but some credentials come from existing Secrets",
    ),
    (
        "rbac-without-service-account",
        {"serviceAccount": {"create": False}},
        "rbac.create is true but serviceAccount.create is false and serviceAccount.name is empty",
    ),
    (
        "runs-as-the-chart-account",
        {"kfp": {"runServiceAccount": "kubetune"}},
        'kfp.runServiceAccount is "kubetune", one of the chart\'s own ServiceAccounts',
    ),
    (
        "runs-as-the-registrar",
        {"kfp": {"runServiceAccount": "kubetune-registrar"}},
        "so every run would fail at its first driver step",
    ),
    (
        "runs-as-the-doctor",
        {"kfp": {"runServiceAccount": "kubetune-doctor"}},
        "Leave kfp.runServiceAccount empty (KFP then uses pipeline-runner, or default-editor in a Kubeflow profile)",
    ),
    (
        "experiment-without-name",
        {
            "experiments": [
                {"apiVersion": "kubetune/v1alpha1", "kind": "Experiment", "metadata": {}, "spec": {"budget": {}}}
            ]
        },
        "experiments[0] has no metadata.name",
    ),
    (
        "experiment-not-an-object",
        {"experiments": ["digits-cnn.yaml"]},
        "experiments[0] must be an Experiment object",
    ),
    (
        "experiment-wrong-api-version",
        {"experiments": [dict(experiment(), apiVersion="kubetune/v1")]},
        'experiments[0] (digits-cnn) must have apiVersion kubetune/v1alpha1, got "kubetune/v1"',
    ),
    (
        "experiment-wrong-kind",
        {"experiments": [dict(experiment(), kind="Study")]},
        'experiments[0] (digits-cnn) must have kind Experiment, got "Study"',
    ),
    (
        "experiment-without-spec",
        {"experiments": [{k: v for k, v in experiment().items() if k != "spec"}]},
        "experiments[0] (digits-cnn) has no spec",
    ),
    (
        "experiment-name-not-dns",
        {"experiments": [experiment("Digits_CNN")]},
        'experiment name "Digits_CNN" is not a DNS-1123 label',
    ),
    (
        "experiment-name-too-long",
        {"experiments": [experiment("a" * 41)]},
        "at most 40 are allowed",
    ),
    (
        "experiment-name-twice",
        {"experiments": [experiment()], "experimentConfigMaps": [{"name": "digits-cnn", "configMap": "team"}]},
        'experiment name "digits-cnn" is used twice',
    ),
    (
        "experiment-configmap-without-configmap",
        {"experimentConfigMaps": [{"name": "mnist1d"}]},
        "experimentConfigMaps[0] has no configMap",
    ),
    (
        "experiment-configmap-without-name",
        {"experimentConfigMaps": [{"configMap": "team"}]},
        "experimentConfigMaps[0] (ConfigMap team) has no name",
    ),
]


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart minus values.schema.json, as with `--skip-schema-validation`: the `fail` checks alone."""
    target = tmp_path_factory.mktemp("chart") / "kubetune"
    shutil.copytree(ds.CHART, target)
    (target / "values.schema.json").unlink()
    return target


@pytest.mark.parametrize(("values", "message"), [c[1:] for c in FAIL_CASES], ids=[c[0] for c in FAIL_CASES])
def test_inconsistent_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str, chart_without_schema: Path
) -> None:
    with pytest.raises(helm.HelmError) as raised:
        ds.render(values, chart=chart_without_schema)
    assert message in str(raised.value)
    # With the schema in place the values are refused too (by the schema or by the same `fail`).
    with pytest.raises(helm.HelmError):
        ds.render(values)


def test_valid_external_services_render() -> None:
    values = {
        "postgresql": {"enabled": False},
        "externalDatabase": {"host": "db.example.com", "existingSecret": "db"},
        "minio": {"enabled": False},
        "externalS3": {"endpoint": "https://s3.example.com", "existingSecret": "s3"},
        "pipelineSecret": {"existingSecret": "pipeline"},
    }
    objs = ds.render_objects(values)
    assert not ds.find(objs, "StatefulSet") and not ds.find(objs, "Secret")
    policies = [p["metadata"]["name"] for p in ds.find(objs, "NetworkPolicy")]
    assert policies == ["kubetune-storage-proxy"], (
        "only the proxy runs in the cluster in front of the external database"
    )
    assert ds.one(objs, "ConfigMap", "kubetune-config")["data"]["KUBETUNE_S3_ENDPOINT"] == "https://s3.example.com"


# ------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"mlflow": {"replicas": 2}}, "replicas"),
        ({"postgresql": {"persistence": {"size": "lots"}}}, "size"),
        (
            {
                "experiments": [
                    {"apiVersion": "kubetune/v1alpha1", "kind": "Experiment", "metadata": {}, "spec": {"a": 1}}
                ]
            },
            "name",
        ),
        ({"experiments": [experiment("Bad_Name")]}, "name"),
        ({"trial": {"gpuTolerations": [{"key": "nvidia.com/gpu", "operator": "Sometimes"}]}}, "operator"),
        ({"mlflow": {"resources": {"limits": None}}}, "limits"),
        ({"image": {"digest": "sha256:short"}}, "digest"),
        ({"kfp": {"runServiceAccount": "Pipeline_Runner"}}, "runServiceAccount"),
        ({"kfp": {"namespace": "Team A"}}, "namespace"),
        ({"istio": {"sidecars": "no"}}, "sidecars"),
        ({"tests": {"doctor": {"resources": {"limits": None}}}}, "limits"),
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "bad-size",
        "experiment-no-name",
        "experiment-bad-name",
        "bad-toleration",
        "no-limits",
        "bad-digest",
        "bad-run-account",
        "bad-namespace",
        "bad-sidecars",
        "doctor-without-limits",
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], fragment: str) -> None:
    # Rendering validates the merged values against values.schema.json, as `helm install` does.
    with pytest.raises(helm.HelmError) as raised:
        ds.render(values)
    assert "schema" in str(raised.value) and fragment in str(raised.value)


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_schema_accepts_every_scenario(scenario: str) -> None:
    with helm.Chart.load(ds.CHART) as chart:
        chart.validate_schema(chart.merge_values(ds.ci_values(scenario)))


# Objects whose content is deliberately not checked by the chart: Helm's `global`, Kubernetes affinity
# terms (passed through unchanged) and the experiment spec (validated by `kubetune submit`).
OPEN_OBJECTS = {
    "properties.global",
    "$defs.affinity.properties.nodeAffinity",
    "$defs.affinity.properties.podAffinity",
    "$defs.affinity.properties.podAntiAffinity",
    "$defs.experiment.properties.spec",
}


def _object_schemas(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((path, node))
        for key, value in node.items():
            found.extend(_object_schemas(value, f"{path}.{key}" if path else key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_object_schemas(value, f"{path}[{i}]"))
    return found


def test_schema_is_closed_and_complete() -> None:
    schema = json.loads((ds.CHART / "values.schema.json").read_text())
    for path, node in _object_schemas(schema):
        assert "additionalProperties" in node, f"{path} does not state additionalProperties"
        if node["additionalProperties"] is True:
            assert path in OPEN_OBJECTS, f"{path} accepts any key"
    # Every value in values.yaml is described by the schema.
    values = yaml.safe_load((ds.CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


# ----------------------------------------------------------------------------------- experiment Jobs


def _experiment_jobs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        j["metadata"]["labels"]["kubetune.io/experiment"]: j
        for j in ds.find(objs, "Job")
        if "kubetune.io/experiment" in j["metadata"]["labels"]
    }


def test_same_spec_same_job_name_changed_spec_new_name() -> None:
    first = _experiment_jobs(ds.render_objects({"experiments": [experiment(), experiment("other")]}))
    again = _experiment_jobs(ds.render_objects({"experiments": [experiment(), experiment("other")]}))
    reordered = copy.deepcopy(EXPERIMENT)
    reordered["spec"] = dict(reversed(list(reordered["spec"].items())))  # same content, other key order
    same = _experiment_jobs(ds.render_objects({"experiments": [reordered, experiment("other")]}))
    changed = _experiment_jobs(
        ds.render_objects({"experiments": [experiment(budget={"maxTrials": 60}), experiment("other")]})
    )

    name = first["digits-cnn"]["metadata"]["name"]
    assert name.startswith("kubetune-exp-digits-cnn-") and len(name) <= 63
    assert again["digits-cnn"]["metadata"]["name"] == name
    assert same["digits-cnn"]["metadata"]["name"] == name
    assert changed["digits-cnn"]["metadata"]["name"] != name
    assert changed["other"]["metadata"]["name"] == first["other"]["metadata"]["name"], "an unchanged spec keeps its Job"


def test_a_new_image_makes_new_jobs() -> None:
    # Jobs are immutable: a new pod template (here the image) must come with a new name.
    before = _experiment_jobs(ds.render_objects({"experiments": [experiment()]}))["digits-cnn"]
    after = _experiment_jobs(ds.render_objects({"experiments": [experiment()], "image": {"tag": "0.2.0"}}))[
        "digits-cnn"
    ]
    assert before["metadata"]["name"] != after["metadata"]["name"]
    # so must every other value the pod template is made of
    for values in (
        {"kfp": {"multiUser": True}},
        {"experimentJob": {"resources": {"limits": {"memory": "2Gi"}}}},
        {"imagePullSecrets": ["registry"]},
    ):
        other = _experiment_jobs(ds.render_objects({"experiments": [experiment()], **values}))["digits-cnn"]
        assert other["metadata"]["name"] != before["metadata"]["name"], values
        assert ds.pod_template(other) != ds.pod_template(before), values


def test_experiment_job_runs_kubetune_submit(scenario_objects: dict[str, list[dict[str, Any]]]) -> None:
    objs = scenario_objects["experiments-values"]
    jobs = _experiment_jobs(objs)
    assert set(jobs) == {"digits-cnn", "mnist1d-mlp"}
    config = ds.one(objs, "ConfigMap", "kubetune-experiments")
    inline = ds.ci_values("experiments-values")["experiments"][0]
    assert yaml.safe_load(config["data"]["digits-cnn.yaml"]) == inline
    for name, job in jobs.items():
        assert job["spec"]["backoffLimit"] == 3
        assert "ttlSecondsAfterFinished" not in job["spec"], "the scenario keeps finished Jobs (null)"
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["command"] == [
            "kubetune",
            "submit",
            f"/experiments/{name}.yaml",
            "--host",
            "$(KUBETUNE_KFP_HOST)",
        ]
        assert container["envFrom"] == [{"configMapRef": {"name": "kubetune-config"}}], (
            "settings as env, no credentials"
        )
        assert "kubetune.io/access" not in job["spec"]["template"]["metadata"]["labels"], "submit only talks to KFP"
        assert {"name": "experiment", "mountPath": "/experiments", "readOnly": True} in container["volumeMounts"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "experiment"]
        assert volume["configMap"]["items"][0]["path"] == f"{name}.yaml"
        assert spec["serviceAccountName"] == "kubetune"
    assert jobs["mnist1d-mlp"]["spec"]["template"]["spec"]["volumes"][0]["configMap"] == {
        "name": "team-experiments",
        "items": [{"key": "mnist1d-mlp.yaml", "path": "mnist1d-mlp.yaml"}],
    }
    default_ttl = _experiment_jobs(ds.render_objects({"experiments": [experiment()]}))["digits-cnn"]
    assert default_ttl["spec"]["ttlSecondsAfterFinished"] == 86400


def test_configmap_experiment_hash_follows_its_content() -> None:
    # With cluster access (helm install/upgrade), the Job name follows the referenced ConfigMap's content.
    values = {"experimentConfigMaps": [{"name": "mnist1d", "configMap": "team", "key": "mnist1d.yaml"}]}
    names = []
    for content in ("spec: 1", "spec: 1", "spec: 2"):
        api = ds.FakeKubeAPI()
        api.add(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team"}, "data": {"mnist1d.yaml": content}}
        )
        with api.running() as config:
            names.append(_experiment_jobs(ds.render_objects(values, config=config))["mnist1d"]["metadata"]["name"])
    assert names[0] == names[1] != names[2]


# ---------------------------------------------------------------------------- secrets: kept, not leaked


def _passwords(objs: list[dict[str, Any]]) -> dict[str, str]:
    return {k: v for k, v in ds.decoded_secret_values(objs).items() if k.startswith("kubetune-passwords/")}


def test_generated_secrets_are_kept_and_reused_through_lookup() -> None:
    first = ds.render_objects({})
    passwords = ds.one(first, "Secret", "kubetune-passwords")
    assert passwords["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Offline, nothing can be looked up: every render generates new values ...
    assert _passwords(ds.render_objects({})) != _passwords(first)
    # ... but against a cluster that holds the Secret, an upgrade reuses it, and the pipeline Secret is
    # rebuilt from the same values.
    api = ds.FakeKubeAPI()
    api.add(passwords)
    with api.running() as config:
        upgraded = ds.render_objects({}, config=config, is_upgrade=True)
    assert any("/secrets/kubetune-passwords" in r for r in api.requests), "the chart did not look the Secret up"
    assert _passwords(upgraded) == _passwords(first)
    pipeline = ds.decoded_secret_values(upgraded)
    assert (
        pipeline["kubetune-credentials/KUBETUNE_STORAGE"]
        == ds.decoded_secret_values(first)["kubetune-credentials/KUBETUNE_STORAGE"]
    )


USERINFO = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
SENTINELS = {
    "postgres-password": "SENTINEL-pg-3f9a1c7e",
    "minio-root-user": "SENTINEL-user-8d2b",
    "minio-root-password": "SENTINEL-s3-secret-51e0aa",
}


def _leaks(objs: list[dict[str, Any]], secrets: list[str]) -> list[str]:
    """Places outside Secrets where a secret value (plain or base64) shows up."""
    needles = set(secrets) | {base64.b64encode(s.encode()).decode() for s in secrets}
    leaks = []
    for obj in objs:
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        leaks += [f"{obj['kind']}/{obj['metadata']['name']}" for n in needles if n in text]
    return leaks


def test_sentinel_secret_values_appear_only_in_secrets() -> None:
    api = ds.FakeKubeAPI()
    api.add(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kubetune-passwords"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in SENTINELS.items()},
        }
    )
    values = yaml.safe_load((Path(__file__).parent / "values-sentinel.yaml").read_text())
    with api.running() as config:
        manifests = ds.render(values, config=config, is_upgrade=True)
    objs = ds.objects(manifests)
    secrets = ds.decoded_secret_values(objs)
    assert secrets["kubetune-passwords/postgres-password"] == SENTINELS["postgres-password"]
    assert SENTINELS["postgres-password"] in secrets["kubetune-credentials/KUBETUNE_STORAGE"]
    assert _leaks(objs, list(SENTINELS.values())) == []
    assert not any(s in manifests["kubetune/templates/NOTES.txt"] for s in SENTINELS.values())
    # No env literal or ConfigMap value carries a URL with user:password@ either.
    for obj in ds.workloads(objs):
        for container in ds.containers(ds.pod_template(obj)["spec"]):
            for entry in container.get("env", []):
                assert not USERINFO.search(entry.get("value", "")), f"{obj['metadata']['name']}: env {entry['name']}"
    for config_map in ds.find(objs, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not USERINFO.search(value), f"ConfigMap {config_map['metadata']['name']}/{key}"


def test_leak_check_would_notice_a_leak() -> None:
    fake = [
        {"kind": "ConfigMap", "metadata": {"name": "oops"}, "data": {"url": "postgresql://u:SENTINEL-pg-3f9a1c7e@h/db"}}
    ]
    assert _leaks(fake, [SENTINELS["postgres-password"]]) == ["ConfigMap/oops"]


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_generated_secret_values_appear_only_in_secrets(
    scenario: str, scenario_objects: dict[str, list[dict[str, Any]]]
) -> None:
    objs = scenario_objects[scenario]
    secrets = [v for v in ds.decoded_secret_values(objs).values() if len(v) >= 8 and "://" not in v]
    assert _leaks(objs, secrets) == []


# ------------------------------------------------------------------------------------ values README


def test_values_readme_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ds.CHART / "gen_values_doc.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_values_doc_generator_flags_a_missing_comment(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    readme = tmp_path / "README.md"
    text = (ds.CHART / "values.yaml").read_text()
    values.write_text(text.replace("  # -- Number of MLflow server pods.\n", "", 1))
    readme.write_text((ds.CHART / "README.md").read_text())
    script = str(ds.CHART / "gen_values_doc.py")
    result = subprocess.run(
        [sys.executable, script, "--check", "--values", str(values), "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "mlflow.replicaCount" in result.stderr
    # A changed description makes the README stale.
    values.write_text(text.replace("Number of MLflow server pods.", "How many MLflow pods."))
    result = subprocess.run(
        [sys.executable, script, "--check", "--values", str(values), "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "stale" in result.stderr
    subprocess.run([sys.executable, script, "--values", str(values), "--readme", str(readme)], check=True, timeout=60)
    assert "How many MLflow pods." in readme.read_text()


def test_values_readme_lists_every_documented_value() -> None:
    readme = (ds.CHART / "README.md").read_text()
    for key in (
        "trial.gpuNodeSelector",
        "trial.gpuTolerations",
        "trial.imagePullSecrets",
        "experiments",
        "experimentConfigMaps",
        "externalDatabase.existingSecret",
        "pipelineSecret.existingSecret",
        "dashboard.enabled",
    ):
        assert f"| `{key}` |" in readme
