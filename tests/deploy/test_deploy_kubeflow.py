"""What runs in a Kubeflow cluster needs from the chart and the manifests: the account runs use, the KFP
namespace and token, Istio sidecars, resources under a ResourceQuota, and the `helm test` doctor."""

from __future__ import annotations

import copy
from typing import Any

import deploy_support as ds
import pytest
import yaml

MULTI_USER = "multiuser-istio-values"
TOKEN_AUDIENCE = "pipelines.kubeflow.org"
DOCTOR_ENV = [  # what `kubetune doctor` reads, from the ConfigMap or the pipeline Secret
    "KUBETUNE_KFP_HOST",
    "KUBETUNE_NAMESPACE",
    "KUBETUNE_SERVICE_ACCOUNT",
    "KUBETUNE_CREDENTIALS_SECRET",
    "KUBETUNE_CONFIG_MAP",
    "KUBETUNE_STORAGE",
    "MLFLOW_TRACKING_URI",
]


def _multi_user(scenario: str) -> bool:
    return bool(ds.ci_values(scenario).get("kfp", {}).get("multiUser"))


def _config(objs: list[dict[str, Any]]) -> dict[str, str]:
    return ds.one(objs, "ConfigMap", "kubetune-config")["data"]


def _every_render(
    scenario_objects: dict[str, list[dict[str, Any]]], built: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    renders = {f"chart {name}": objs for name, objs in scenario_objects.items()}
    renders.update({f"kustomize {name}": objs for name, objs in built.items()})
    return renders


# --------------------------------------------------------------------------- the account runs use


def run_account_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Why the ServiceAccount a render hands to runs (KUBETUNE_SERVICE_ACCOUNT) would fail a run: a run's
    driver and launcher need a mounted token, the kfp-launcher ConfigMap, the artifact Secret and Argo's
    workflowtaskresults, which no account the chart or the manifests create has."""
    account = _config(objs)["KUBETUNE_SERVICE_ACCOUNT"]
    if not account:
        return []  # KFP's runner account: pipeline-runner, or default-editor in a profile
    problems = []
    created = ds.find(objs, "ServiceAccount", account)
    if created and created[0].get("automountServiceAccountToken") is False:
        problems.append(f"runs would use {account}, which the render creates with automountServiceAccountToken: false")
    if created:
        granted = {
            (group, resource)
            for rule in ds.rules_of(objs, account)
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        for needed in [("", "configmaps"), ("", "secrets"), ("argoproj.io", "workflowtaskresults")]:
            if needed not in granted:
                problems.append(f"runs would use {account}, which may not use {needed[1]}")
    return problems


def test_runs_never_use_an_account_the_stack_restricts(scenario_objects, built) -> None:
    renders = _every_render(scenario_objects, {k: v for k, v in built.items() if k != "experiments"})
    for where, objs in renders.items():
        assert not run_account_problems(objs), where
        assert _config(objs)["KUBETUNE_SERVICE_ACCOUNT"] == "", f"{where}: runs keep KFP's runner account by default"


def test_run_account_check_would_notice_the_chart_account(default_objects) -> None:
    objs = copy.deepcopy(default_objects)
    _config(objs)["KUBETUNE_SERVICE_ACCOUNT"] = "kubetune"
    problems = run_account_problems(objs)
    assert any("automountServiceAccountToken: false" in p for p in problems)
    assert any("workflowtaskresults" in p for p in problems)


def test_a_named_run_account_is_published() -> None:
    objs = ds.render_objects({"kfp": {"runServiceAccount": "kubetune-runner"}})
    assert _config(objs)["KUBETUNE_SERVICE_ACCOUNT"] == "kubetune-runner"
    assert not run_account_problems(objs)
    # the doctor checks the account that runs really use
    rules = ds.one(objs, "Role", "kubetune-doctor")["rules"]
    assert next(r for r in rules if r["resources"] == ["serviceaccounts"])["resourceNames"] == ["kubetune-runner"]


def test_the_chart_account_is_only_for_its_jobs(scenario_objects) -> None:
    for name, objs in scenario_objects.items():
        sa = ds.one(objs, "ServiceAccount", "kubetune")
        assert sa["automountServiceAccountToken"] is False
        users = {ds.pod_template(w)["spec"].get("serviceAccountName") for w in ds.workloads(objs)}
        experiment_jobs = [j for j in ds.find(objs, "Job") if j["metadata"]["name"].startswith("kubetune-exp-")]
        assert all(ds.pod_template(j)["spec"]["serviceAccountName"] == "kubetune" for j in experiment_jobs), name
        assert users <= {None, "kubetune", "kubetune-registrar", "kubetune-doctor"}, name


# ------------------------------------------------------------------------ namespace, region, token


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_namespace_and_region_are_published(scenario: str, scenario_objects) -> None:
    config = _config(scenario_objects[scenario])
    assert config["KUBETUNE_NAMESPACE"] == ds.NAMESPACE
    assert config["AWS_REGION"] == config["AWS_DEFAULT_REGION"] != ""


def test_namespace_and_region_follow_the_values() -> None:
    objs = ds.render_objects(
        {
            "kfp": {"namespace": "team-b"},
            "minio": {"enabled": False},
            "externalS3": {
                "endpoint": "https://s3.eu-west-1.amazonaws.com",
                "region": "eu-west-1",
                "existingSecret": "s3",
            },
            "pipelineSecret": {"existingSecret": "pipeline"},
        }
    )
    config = _config(objs)
    assert config["KUBETUNE_NAMESPACE"] == "team-b"
    assert config["AWS_REGION"] == config["AWS_DEFAULT_REGION"] == "eu-west-1"


@pytest.mark.parametrize(("overlay", "namespace"), [("overlays/dev", "kubeflow"), ("overlays/production", "ml-team")])
def test_overlays_publish_their_namespace_and_region(overlay: str, namespace: str, built) -> None:
    config = _config(built[overlay])
    assert config["KUBETUNE_NAMESPACE"] == namespace
    assert config["AWS_REGION"] == config["AWS_DEFAULT_REGION"] == "us-east-1"


def token_path_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Every container that mounts a projected KFP token must set KF_PIPELINES_SA_TOKEN_PATH to that file."""
    problems = []
    for obj in ds.workloads(objs):
        spec = ds.pod_template(obj)["spec"]
        tokens = {}
        for volume in spec.get("volumes", []):
            for source in (volume.get("projected") or {}).get("sources", []):
                token = source.get("serviceAccountToken")
                if token and token.get("audience") == TOKEN_AUDIENCE:
                    tokens[volume["name"]] = token["path"]
        for container in ds.containers(spec):
            files = [
                f"{m['mountPath']}/{tokens[m['name']]}"
                for m in container.get("volumeMounts", [])
                if m["name"] in tokens
            ]
            path = ds.env_of(container).get("KF_PIPELINES_SA_TOKEN_PATH", {}).get("value")
            if files and path not in files:
                problems.append(
                    f"{obj['metadata']['name']}/{container['name']}: KF_PIPELINES_SA_TOKEN_PATH={path!r}, token at {files}"
                )
            if path and not files:
                problems.append(
                    f"{obj['metadata']['name']}/{container['name']}: KF_PIPELINES_SA_TOKEN_PATH set, no token mounted"
                )
    return problems


def test_kfp_token_path_matches_its_mount(scenario_objects, built) -> None:
    for where, objs in _every_render(scenario_objects, built).items():
        assert not token_path_problems(objs), where
    # and the check is not vacuous
    objs = copy.deepcopy(scenario_objects[MULTI_USER])
    job = ds.one(objs, "Job", "kubetune-register-pipeline")
    ds.env_of(ds.pod_template(job)["spec"]["containers"][0])["KF_PIPELINES_SA_TOKEN_PATH"]["value"] = "/token"
    assert token_path_problems(objs)


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_kfp_clients_hold_a_token_exactly_in_multi_user_mode(scenario: str, scenario_objects) -> None:
    objs = scenario_objects[scenario]
    clients = [
        w
        for w in ds.workloads(objs)
        if ds.containers(ds.pod_template(w)["spec"])[0]["image"].startswith("ghcr.io/kubetune/runtime")
    ]
    clients = [w for w in clients if w["kind"] != "Deployment"]  # the dashboard never calls KFP
    assert {c["metadata"]["name"] for c in clients} >= {"kubetune-register-pipeline", "kubetune-test-doctor"}
    for client in clients:
        env = ds.env_of(ds.pod_template(client)["spec"]["containers"][0])
        assert ("KF_PIPELINES_SA_TOKEN_PATH" in env) is _multi_user(scenario), client["metadata"]["name"]


def test_production_overlay_jobs_hold_a_kfp_token(built) -> None:
    spec = ds.pod_template(ds.one(built["overlays/production"], "Job", "kubetune-register-pipeline"))["spec"]
    env = ds.env_of(spec["containers"][0])
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == "/var/run/secrets/kubeflow/pipelines/token"
    dev = ds.pod_template(ds.one(built["overlays/dev"], "Job", "kubetune-register-pipeline"))["spec"]
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in ds.env_of(dev["containers"][0]), "standalone KFP takes no token"


def test_kfp_token_component_reaches_the_submit_job(manifests_copy, tmp_path) -> None:
    import shutil

    folder = tmp_path / "manifests"
    shutil.copytree(manifests_copy, folder)
    kustomization = folder / "experiments" / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["components"] = ["../components/kfp-token"]
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))
    objs = ds.kustomize_build(folder / "experiments")
    spec = ds.pod_template(ds.one(objs, "Job", "kubetune-submit-experiments"))["spec"]
    assert (
        ds.env_of(spec["containers"][0])["KF_PIPELINES_SA_TOKEN_PATH"]["value"]
        == "/var/run/secrets/kubeflow/pipelines/token"
    )
    assert not token_path_problems(objs)
    assert not ds.validation_errors(objs, ["1.30.0"])


# ------------------------------------------------------------------------------------ PodDefault

# kubeflow/manifests tests/poddefaults.access-ml-pipeline.kubeflow-user-example-com.yaml@26.03: the
# PodDefault Kubeflow documents. Ours must inject exactly the same, or the webhook refuses pods that
# both select.
DOCUMENTED_PODDEFAULT_SPEC = {
    "desc": "Allow access to Kubeflow Pipelines",
    "selector": {"matchLabels": {"access-ml-pipeline": "true"}},
    "env": [{"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": "/var/run/secrets/kubeflow/pipelines/token"}],
    "volumes": [
        {
            "name": "volume-kf-pipeline-token",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 7200, "audience": TOKEN_AUDIENCE}}
                ]
            },
        }
    ],
    "volumeMounts": [
        {"mountPath": "/var/run/secrets/kubeflow/pipelines", "name": "volume-kf-pipeline-token", "readOnly": True}
    ],
}


def test_poddefault_in_multi_user_mode(scenario_objects, built) -> None:
    for where, objs in [("chart", scenario_objects[MULTI_USER]), ("production overlay", built["overlays/production"])]:
        (pod_default,) = ds.find(objs, "PodDefault")
        assert pod_default["apiVersion"] == "kubeflow.org/v1alpha1", where
        assert pod_default["metadata"]["name"] == "kubetune-access-ml-pipeline", where
        assert pod_default["spec"] == DOCUMENTED_PODDEFAULT_SPEC, where
    assert not ds.find(built["overlays/dev"], "PodDefault")
    for name, objs in scenario_objects.items():
        assert bool(ds.find(objs, "PodDefault")) is _multi_user(name), name
    assert not ds.find(ds.render_objects({"kfp": {"multiUser": True, "podDefault": {"create": False}}}), "PodDefault")


def test_poddefault_check_catches_mistakes(scenario_objects) -> None:
    good = ds.one(scenario_objects[MULTI_USER], "PodDefault", "kubetune-access-ml-pipeline")
    assert not ds.poddefault_errors(good, "1.30.0")
    broken = copy.deepcopy(good)
    broken["spec"]["volumeMount"] = broken["spec"].pop("volumeMounts")
    broken["spec"]["env"][0]["valu"] = "x"
    broken["spec"]["selector"] = {}
    errors = ds.poddefault_errors(broken, "1.30.0")
    assert any("unknown field spec.volumeMount" in e for e in errors)
    assert any("injected pod fields" in e for e in errors)
    assert any("selects nothing" in e for e in errors)


# ---------------------------------------------------------------------------------------- Istio


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return ds.pod_template(obj)["metadata"].get("annotations") or {}


def _without_sidecar(obj: dict[str, Any]) -> bool:
    return all(_annotations(obj).get(k) == v for k, v in ds.NO_SIDECAR.items())


def test_jobs_and_test_pods_never_get_a_sidecar(scenario_objects, built) -> None:
    for where, objs in _every_render(scenario_objects, built).items():
        for obj in ds.workloads(objs):
            if obj["kind"] in ("Job", "Pod"):
                assert _without_sidecar(obj), f"{where}: {obj['kind']}/{obj['metadata']['name']} would never complete"


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_services_lose_their_sidecar_in_multi_user_mode(scenario: str, scenario_objects) -> None:
    services = [w for w in ds.workloads(scenario_objects[scenario]) if w["kind"] in ("Deployment", "StatefulSet")]
    assert services
    for service in services:
        assert _without_sidecar(service) is _multi_user(scenario), service["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "without_sidecar"),
    [
        ({"istio": {"sidecars": False}}, True),
        ({"kfp": {"multiUser": True}, "istio": {"sidecars": True}}, False),
        ({"kfp": {"multiUser": True}, "istio": {"sidecars": None}}, True),
    ],
    ids=["off-single-user", "on-multi-user", "default-multi-user"],
)
def test_istio_sidecars_value(values: dict[str, Any], without_sidecar: bool) -> None:
    objs = ds.render_objects(dict(values, dashboard={"enabled": True}))
    for obj in ds.workloads(objs):
        expected = True if obj["kind"] in ("Job", "Pod") else without_sidecar
        assert _without_sidecar(obj) is expected, obj["metadata"]["name"]
    if without_sidecar:  # the PostgreSQL pod keeps its own annotation next to it
        assert "checksum/init" in _annotations(ds.one(objs, "StatefulSet", "kubetune-postgresql"))


def test_production_overlay_services_have_no_sidecar(built) -> None:
    services = [w for w in ds.workloads(built["overlays/production"]) if w["kind"] in ("Deployment", "StatefulSet")]
    assert {s["metadata"]["name"] for s in services} == {
        "kubetune-mlflow",
        "kubetune-postgresql",
        "kubetune-minio",
        "kubetune-storage-proxy",
    }
    assert all(_without_sidecar(s) for s in services)
    assert not any(
        _without_sidecar(s) for s in ds.workloads(built["overlays/dev"]) if s["kind"] in ("Deployment", "StatefulSet")
    )


# ------------------------------------------------------------------------------------- resources


def test_every_pod_has_requests_and_limits(scenario_objects, built) -> None:
    """A namespace with a ResourceQuota on cpu/memory and no LimitRange refuses pods without them."""
    renders = _every_render(scenario_objects, built)
    renders["chart everything on"] = ds.render_objects(
        {
            "kfp": {"multiUser": True},
            "dashboard": {"enabled": True},
            "experiments": ds.ci_values("experiments-values")["experiments"],
        }
    )
    for where, objs in renders.items():
        assert ds.workloads(objs), where
        assert not ds.resource_problems(objs), where


def test_resource_check_catches_a_missing_limit(scenario_objects) -> None:
    objs = copy.deepcopy(scenario_objects[MULTI_USER])
    del ds.one(objs, "Pod", "kubetune-test-doctor")["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert ds.resource_problems(objs) == ["Pod/kubetune-test-doctor/doctor: no limits.memory"]


# ---------------------------------------------------------------------------------------- doctor


@pytest.mark.parametrize("scenario", ds.SCENARIOS)
def test_helm_test_runs_kubetune_doctor(scenario: str, scenario_objects) -> None:
    objs = scenario_objects[scenario]
    config = _config(objs)
    pod = ds.one(objs, "Pod", "kubetune-test-doctor")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kubetune-doctor" and spec["automountServiceAccountToken"] is True
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["command"] == ["kubetune", "doctor"]
    assert container["image"] == config["KUBETUNE_IMAGE"]
    secret = config["KUBETUNE_CREDENTIALS_SECRET"]
    assert container["envFrom"] == [{"configMapRef": {"name": "kubetune-config"}}, {"secretRef": {"name": secret}}]
    provided = set(config)
    provided |= {key.split("/", 1)[1] for key in ds.decoded_secret_values(objs) if key.startswith(f"{secret}/")}
    if not ds.find(objs, "Secret", secret):  # an existing Secret; the chart documents its keys
        provided |= {"KUBETUNE_STORAGE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(DOCTOR_ENV) <= provided
    assert ("KF_PIPELINES_SA_TOKEN_PATH" in ds.env_of(container)) is _multi_user(scenario)
    assert _without_sidecar(pod)
    assert pod["metadata"]["labels"]["kubetune.io/access"] == "true", "doctor reaches the database"

    # its own account, a hook like the pod, created before it
    sa = ds.one(objs, "ServiceAccount", "kubetune-doctor")
    assert sa["automountServiceAccountToken"] is False, "only the doctor pod mounts the token"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        hook = ds.one(objs, kind, "kubetune-doctor")["metadata"]["annotations"]
        assert hook["helm.sh/hook"] == "test" and int(hook["helm.sh/hook-weight"]) < int(
            pod["metadata"]["annotations"].get("helm.sh/hook-weight", "0")
        )
    binding = ds.one(objs, "RoleBinding", "kubetune-doctor")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-doctor", "namespace": ds.NAMESPACE}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubetune-doctor"}

    run_account = config["KUBETUNE_SERVICE_ACCOUNT"] or (
        "default-editor" if _multi_user(scenario) else "pipeline-runner"
    )
    rules = sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]), tuple(r.get("resourceNames", [])))
        for r in ds.rules_of(objs, "kubetune-doctor")
    )
    assert rules == sorted(
        [
            (("",), ("secrets",), ("get",), (secret,)),
            (("",), ("configmaps",), ("get",), ("kubetune-config",)),
            (("",), ("serviceaccounts",), ("get",), (run_account,)),
            (("authorization.k8s.io",), ("localsubjectaccessreviews",), ("create",), ()),
            *([(("pipelines.kubeflow.org",), ("experiments",), ("list",), ())] if _multi_user(scenario) else []),
        ]
    )
    # every other pod of the release goes without a Kubernetes API token
    for obj in ds.workloads(objs):
        if obj is not pod:
            assert ds.pod_template(obj)["spec"]["automountServiceAccountToken"] is False, obj["metadata"]["name"]


def test_doctor_can_be_turned_off() -> None:
    objs = ds.render_objects({"tests": {"doctor": {"enabled": False}}})
    assert not [o for o in objs if "doctor" in o["metadata"]["name"]]
    ds.one(objs, "Pod", "kubetune-test-connection")


def test_token_privilege_check_refuses_a_broader_doctor(default_objects) -> None:
    assert not ds.token_privilege_problems(default_objects, "kubetune-doctor")
    objs = copy.deepcopy(default_objects)
    rules = ds.one(objs, "Role", "kubetune-doctor")["rules"]
    del rules[0]["resourceNames"]
    rules.append({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})
    problems = ds.token_privilege_problems(objs, "kubetune-doctor")
    assert len(problems) == 2
    assert any("of any name" in p for p in problems) and any("'list'" in p for p in problems)
    assert ds.security_problems(objs), "a broader doctor pod fails the security check"
    assert ds.token_privilege_problems(objs, "default"), "a token for an account the chart does not create"


# ------------------------------------------------------------------------------------------ NOTES


def test_notes_give_the_multi_user_commands() -> None:
    notes = ds.render(ds.ci_values(MULTI_USER))["kubetune/templates/NOTES.txt"]
    assert f"kubectl -n {ds.NAMESPACE} get poddefault kubetune-access-ml-pipeline" in notes
    assert (
        f"kubectl -n {ds.NAMESPACE} create token default-editor --audience pipelines.kubeflow.org > kfp-token" in notes
    )
    assert f"--host http://localhost:8888 --namespace {ds.NAMESPACE}" in notes
    assert f"helm test {ds.RELEASE} -n {ds.NAMESPACE} --logs" in notes
    assert "kubetune doctor" in notes and "without an Istio sidecar" in notes
    single = ds.render({})["kubetune/templates/NOTES.txt"]
    assert "PodDefault" not in single and "--namespace" not in single and 'ServiceAccount "pipeline-runner"' in single
    no_pod_default = ds.render({"kfp": {"multiUser": True, "podDefault": {"create": False}}})[
        "kubetune/templates/NOTES.txt"
    ]
    assert "kfp.podDefault.create is false: create it yourself" in no_pod_default
