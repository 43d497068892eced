"""The KFP API boundary: the double refuses what the 2.17 server refuses, and the gateway gets token,
namespace, experiment lookup and backend version right."""

import json
import logging
import urllib.error
import urllib.request
import uuid

import pytest
import urllib3.exceptions as urllib3_errors
import yaml
from click.testing import CliRunner
from kfp_double import UNAVAILABLE, KfpApiDouble, Refusal
from kfp_server_api.exceptions import ApiException
from repo_paths import DIGITS

from kubetune import kfp_api as gateway
from kubetune.cli import cli
from kubetune.cluster_settings import ClusterSettings
from kubetune.pipelines import compile_pipeline
from kubetune.spec import load_experiment

SUBMIT = ["submit", str(DIGITS)]


def _request(double, method, path, body=None, *, token=None, content_type="application/json", query=""):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{double.host}/apis/v2beta1{path}{query}", data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _multipart(field, filename, content):
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    return compile_pipeline(load_experiment(DIGITS), path, ClusterSettings())


@pytest.fixture
def documents(package):
    spec, platform = yaml.safe_load_all(open(package))
    return spec, platform


@pytest.fixture
def multi_user():
    with KfpApiDouble(multi_user=True) as double:
        yield double


def _experiment(double, name="e", namespace="team-a"):
    status, body = _request(
        double, "POST", "/experiments", {"display_name": name, "namespace": namespace}, token=double.token
    )
    assert status == 200, body
    return body["experiment_id"]


def _run(double, experiment_id, documents, parameters=None):
    spec, platform = documents
    body = {
        "experiment_id": experiment_id,
        "display_name": "r",
        "pipeline_spec": {"pipeline_spec": spec, "platform_spec": platform},
        "runtime_config": {"parameters": {"experiment_spec": "{}", "segment": 0} if parameters is None else parameters},
    }
    return _request(double, "POST", "/runs", body, token=double.token)


# --- the double's rules ----------------------------------------------------------------------------


def test_multi_user_needs_a_token_and_says_so_as_the_server_does(multi_user):
    status, body = _request(multi_user, "GET", "/experiments", query="?namespace=team-a")
    assert (
        status == 401 and body["code"] == 16 and "User identity is empty" in body["message"] and body["details"] == []
    )
    assert _request(multi_user, "GET", "/experiments", query="?namespace=team-a", token="forged")[0] == 401


def test_a_token_is_refused_in_a_namespace_it_may_not_use(multi_user):
    status, body = _request(multi_user, "GET", "/experiments", query="?namespace=team-b", token=multi_user.token)
    assert status == 403 and body["code"] == 7


def test_healthz_and_shared_pipelines_need_no_token(multi_user):
    assert _request(multi_user, "GET", "/healthz") == (
        200,
        {"commit_sha": "unknown", "tag_name": "2.17.0", "multi_user": True, "pipeline_store": "database"},
    )
    assert _request(multi_user, "GET", "/pipelines")[0] == 200


def test_multi_user_refuses_an_experiment_without_namespace(multi_user):
    status, body = _request(multi_user, "POST", "/experiments", {"display_name": "e"}, token=multi_user.token)
    assert status == 400 and "empty namespace in multi-user mode" in body["message"]


def test_experiment_names_are_unique_per_namespace(multi_user):
    _experiment(multi_user)
    status, body = _request(
        multi_user, "POST", "/experiments", {"display_name": "e", "namespace": "team-a"}, token=multi_user.token
    )
    assert status == 409 and body["code"] == 6 and "already exists" in body["message"]
    multi_user.tokens[multi_user.token].add("team-b")
    _experiment(multi_user, namespace="team-b")


def test_unknown_ids_are_404_with_the_gateway_body():
    with KfpApiDouble() as double:
        for path in (
            "/experiments/nope",
            "/pipelines/nope",
            "/runs/nope",
            "/pipelines/nope/versions",
            "/no-such-route",
        ):
            status, body = _request(double, "GET", path)
            assert status == 404 and set(body) == {"code", "message", "details"} and body["code"] == 5, path


def test_uploads_follow_the_upload_server_rules(package):
    content = package.read_bytes()
    with KfpApiDouble() as double:
        for field, filename in (("file", "pipeline.yaml"), ("uploadfile", "pipeline.txt")):
            body, content_type = _multipart(field, filename, content)
            status, answer = _request(double, "POST", "/pipelines/upload", body, content_type=content_type)
            assert status == 400 and set(answer) == {"error_message", "error_details"}, (field, filename)
        body, content_type = _multipart("uploadfile", "search.yml", content)
        status, pipeline = _request(double, "POST", "/pipelines/upload", body, content_type=content_type)
        assert status == 200 and pipeline["display_name"] == "search.yml"  # no name: the file name
        status, answer = _request(double, "POST", "/pipelines/upload", body, content_type=content_type)
        assert status == 409 and answer["error_message"] == "Failed to create a pipeline and a pipeline version"
        query = f"?name=v1&pipelineid={pipeline['pipeline_id']}"
        assert (
            _request(double, "POST", "/pipelines/upload_version", body, content_type=content_type, query=query)[0]
            == 200
        )
        assert (
            _request(double, "POST", "/pipelines/upload_version", body, content_type=content_type, query=query)[0]
            == 409
        )
        status, _ = _request(
            double,
            "POST",
            "/pipelines/upload_version",
            body,
            content_type=content_type,
            query="?name=v2&pipelineid=nope",
        )
        assert status == 400


def test_an_unauthorized_upload_is_400_as_the_upload_server_answers(multi_user, package):
    body, content_type = _multipart("uploadfile", "pipeline.yaml", package.read_bytes())
    for token in (None, multi_user.token):
        status, answer = _request(
            multi_user,
            "POST",
            "/pipelines/upload",
            body,
            content_type=content_type,
            query="?name=p&namespace=team-b",
            token=token,
        )
        assert status == 400 and answer["error_message"] == "Failed to create a pipeline"
    assert not multi_user.pipelines


def test_runs_are_checked_against_the_root_inputs(multi_user, documents):
    experiment_id = _experiment(multi_user)
    assert _run(multi_user, experiment_id, documents)[0] == 200
    cases = {
        "not required by pipeline: segmnet": {"experiment_spec": "{}", "segment": 0, "segmnet": 1},
        "requires type NUMBER_INTEGER": {"experiment_spec": "{}", "segment": "0"},
        "requires type STRING": {"experiment_spec": True},
    }
    for expected, parameters in cases.items():
        status, body = _run(multi_user, experiment_id, documents, parameters)
        assert status == 400 and expected in body["message"], (expected, body)
    spec, platform = documents
    segment = spec["root"]["inputDefinitions"]["parameters"]["segment"]
    del segment["isOptional"], segment["defaultValue"]
    status, body = _run(multi_user, experiment_id, (spec, platform), {"experiment_spec": "{}"})
    assert status == 400 and "parameter segment is not optional" in body["message"]


def test_a_platform_field_newer_than_the_minimum_backend_is_refused(multi_user, documents):
    spec, platform = documents
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    next(iter(executors.values()))["securityContext"] = {"runAsUser": 1000}  # kubernetes_executor_config.proto@2.16.0
    status, body = _run(multi_user, _experiment(multi_user), (spec, platform))
    assert status == 400 and "securityContext" in body["message"] and gateway.MINIMUM_BACKEND in body["message"]


def test_a_run_in_an_unknown_experiment_is_404(multi_user, documents):
    assert _run(multi_user, "experiment-404", documents)[0] == 404


def test_runs_are_listed_per_experiment_or_namespace(multi_user, documents):
    experiment_id = _experiment(multi_user)
    assert _run(multi_user, experiment_id, documents)[0] == 200
    for query in (f"?experiment_id={experiment_id}", "?namespace=team-a"):
        status, body = _request(multi_user, "GET", "/runs", query=query, token=multi_user.token)
        assert status == 200 and body["total_size"] == 1, query
    assert _request(multi_user, "GET", "/runs", token=multi_user.token)[0] == 400
    assert _request(multi_user, "GET", "/runs", query="?experiment_id=nope", token=multi_user.token)[0] == 404


# --- the gateway --------------------------------------------------------------------------------------


def test_namespace_resolution_order(isolated_pod, monkeypatch):
    assert gateway.resolve_namespace() is None
    pod_file = isolated_pod / "namespace"
    pod_file.write_text("pod-ns\n")
    monkeypatch.setattr(gateway, "POD_NAMESPACE_FILE", str(pod_file))
    assert gateway.resolve_namespace() == "pod-ns"
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "env-ns")
    assert gateway.resolve_namespace() == "env-ns"
    assert gateway.resolve_namespace("flag-ns") == "flag-ns"


def test_the_token_file_is_sent_as_a_bearer_token_with_an_explicit_host(kfp_api):
    assert CliRunner().invoke(cli, SUBMIT + ["--host", kfp_api.host]).exit_code == 0
    sent = {headers.get("authorization") for headers in kfp_api.headers}
    assert sent == ({f"Bearer {kfp_api.token}"} if kfp_api.multi_user else {None})


def test_experiments_runs_and_pipelines_live_in_the_namespace(kfp_api):
    assert CliRunner().invoke(cli, SUBMIT + ["--host", kfp_api.host]).exit_code == 0
    args = ["register-pipeline", "--host", kfp_api.host, "--version", "1"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    expected = kfp_api.namespace if kfp_api.multi_user else ""
    (experiment,) = kfp_api.experiments.values()
    (run,) = kfp_api.runs.values()
    (pipeline,) = kfp_api.pipelines.values()
    assert experiment["namespace"] == run["namespace"] == pipeline["namespace"] == expected


def test_missing_namespace_in_multi_user_mode_is_exit_2_with_the_fix(multi_user, isolated_pod, monkeypatch):
    token = isolated_pod / "token"
    token.write_text(multi_user.token)
    monkeypatch.setenv(gateway.TOKEN_PATH_ENV, str(token))
    result = CliRunner().invoke(cli, SUBMIT + ["--host", multi_user.host])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "multi-user mode" in result.output and "--namespace" in result.output and "KUBETUNE_NAMESPACE" in result.output
    )
    assert CliRunner().invoke(cli, SUBMIT + ["--host", multi_user.host, "--namespace", "team-a"]).exit_code == 0


def test_a_refusal_names_the_endpoint_and_fix_but_never_the_token(multi_user, isolated_pod, monkeypatch):
    token = isolated_pod / "token"
    token.write_text("wrong-secret-token")
    monkeypatch.setenv(gateway.TOKEN_PATH_ENV, str(token))
    result = CliRunner().invoke(cli, SUBMIT + ["--host", multi_user.host, "--namespace", "team-a"])
    assert result.exit_code == 2 and multi_user.host in result.output and "HTTP 401" in result.output
    assert gateway.TOKEN_PATH_ENV in result.output and "wrong-secret-token" not in result.output


def test_an_older_backend_is_refused(isolated_pod):
    with KfpApiDouble(version="2.14.4") as double:
        for args in (SUBMIT, ["register-pipeline", "--version", "1"]):
            result = CliRunner().invoke(cli, args + ["--host", double.host])
            assert result.exit_code == 2 and "2.14.4" in result.output and gateway.MINIMUM_BACKEND in result.output
        assert not double.runs and not double.pipelines


def test_an_unknown_backend_version_warns_and_goes_on(isolated_pod, caplog):
    with KfpApiDouble(version="unknown") as double, caplog.at_level(logging.WARNING, logger="kubetune.kfp_api"):
        result = CliRunner().invoke(cli, SUBMIT + ["--host", double.host])
        assert result.exit_code == 0 and len(double.runs) == 1
    assert "does not report its version" in caplog.text and gateway.MINIMUM_BACKEND in caplog.text


def test_an_error_other_than_not_found_never_creates_an_experiment(isolated_pod):
    with KfpApiDouble() as double:
        double.faults[("GET", "/experiments")] = Refusal(UNAVAILABLE, "upstream connect error")
        result = CliRunner().invoke(cli, SUBMIT + ["--host", double.host])
        assert result.exit_code == 2 and "HTTP 503" in result.output and not double.experiments
        for _ in range(2):  # two experiments of one name: the server cannot have made them, kfp says "Multiple"
            experiment = {"experiment_id": double._new_id("experiment"), "display_name": "digits-cnn", "namespace": ""}
            double.experiments[experiment["experiment_id"]] = experiment
        result = CliRunner().invoke(cli, SUBMIT + ["--host", double.host])
        assert result.exit_code == 2 and "Multiple experiments" in result.output
        assert len(double.experiments) == 2 and not double.runs
        assert not [path for method, path, _ in double.requests if (method, path) == ("POST", "/experiments")]


def test_a_bug_in_kubetune_is_not_reported_as_a_host_problem():
    def buggy(**_):
        raise TypeError("unexpected keyword argument 'filter'")

    with pytest.raises(TypeError, match="unexpected keyword"):
        gateway.call("http://kfp.example:8888", "list runs", buggy, filter="x")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        urllib3_errors.NewConnectionError(None, "Failed to establish a new connection"),
        ApiException(status=503, reason="Service Unavailable"),
    ],
)
def test_an_unreachable_or_refusing_host_is_a_kfp_error_with_the_fix(error):
    def unreachable():
        raise error

    with pytest.raises(gateway.KfpError, match=r"KFP API at http://kfp.example:8888 failed to list runs: .*Fix: "):
        gateway.call("http://kfp.example:8888", "list runs", unreachable)
