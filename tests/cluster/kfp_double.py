"""A local HTTP double of the KFP v2beta1 REST API, at least as strict as the 2.17 server, recording requests.

It answers the calls kfp.Client makes for kubetune (healthz, experiments, runs, pipeline upload and
versions) in single-user or multi-user mode, and refuses what the real server refuses with the status
code and body the server sends; each rule names the upstream file (kubeflow/pipelines at a tag) it
follows. Run bodies are parsed strictly with the protos of kubetune's MINIMUM_BACKEND, installed by
.ci/run beside the current ones (see ``PROTOS_HINT``). It is a double: no pipeline runs.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import threading
from email import message_from_bytes
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from kubetune.kfp_api import MINIMUM_BACKEND

PREFIX = "/apis/v2beta1"
ROOT = Path(__file__).resolve().parents[2]
PROTOS = Path(os.environ.get("KUBETUNE_KFP_PROTOS", ROOT / "build" / f"kfp-protos-{MINIMUM_BACKEND}"))
PROTOS_HINT = (
    f"python -m pip install --no-deps --target {PROTOS} "
    f"kfp-pipeline-spec=={MINIMUM_BACKEND} kfp-kubernetes=={MINIMUM_BACKEND}"
)
SYSTEM_NAMESPACE = "kubeflow"
# gRPC codes and the HTTP status grpc-gateway v2 maps them to (runtime.HTTPStatusFromCode).
INVALID, NOT_FOUND, EXISTS, DENIED, UNAVAILABLE, UNAUTHENTICATED = (
    (3, 400),
    (5, 404),
    (6, 409),
    (7, 403),
    (14, 503),
    (16, 401),
)


class Refusal(Exception):
    """A refused request: the gRPC code, the HTTP status and the server's message."""

    def __init__(self, kind: tuple[int, int], message: str, *, upload: bool = False):
        super().__init__(message)
        self.code, self.status, self.upload = kind[0], kind[1], upload

    def body(self) -> dict:
        if self.upload:  # writeErrorToResponse: an apiv1beta1.Error (pipeline_upload_server.go@2.17.0)
            return {"error_message": str(self), "error_details": str(self)}
        # grpc-gateway v2 (go.mod@2.17.0: v2.28.0) writes the status proto: code, message, details.
        return {"code": self.code, "message": str(self), "details": []}


def _serialized_file(pb2: Path) -> bytes:
    """The FileDescriptorProto a generated *_pb2.py module carries, read without importing the module."""
    for node in ast.walk(ast.parse(pb2.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise ValueError(f"{pb2} holds no serialized descriptor")


def minimum_protos() -> dict[str, type]:
    """PipelineSpec, PlatformSpec and KubernetesExecutorConfig as MINIMUM_BACKEND defines them."""
    files = [
        PROTOS / "kfp/pipeline_spec/pipeline_spec_pb2.py",
        PROTOS / "kfp/kubernetes/kubernetes_executor_config_pb2.py",
    ]
    if not all(path.is_file() for path in files):
        raise RuntimeError(f"the KFP {MINIMUM_BACKEND} protos are missing under {PROTOS}; install them: {PROTOS_HINT}")
    from google.protobuf import duration_pb2, struct_pb2
    from google.rpc import status_pb2

    pool = descriptor_pool.DescriptorPool()
    for module in (duration_pb2, struct_pb2, status_pb2):
        _add_with_dependencies(pool, module.DESCRIPTOR)
    for path in files:
        pool.AddSerializedFile(_serialized_file(path))
    names = {
        "PipelineSpec": "ml_pipelines.PipelineSpec",
        "PlatformSpec": "ml_pipelines.PlatformSpec",
        "KubernetesExecutorConfig": "kfp_kubernetes.KubernetesExecutorConfig",
    }
    return {key: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for key, name in names.items()}


def _add_with_dependencies(pool, file_descriptor) -> None:
    for dependency in file_descriptor.dependencies:
        _add_with_dependencies(pool, dependency)
    try:
        pool.FindFileByName(file_descriptor.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pool.Add(proto)


def _strict(message_class, data, what: str):
    """protojson.Unmarshal refuses unknown fields (backend/src/apiserver/template/v2_template.go@2.15.0)."""
    try:
        return json_format.ParseDict(data, message_class(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise Refusal(INVALID, f"{what}: {error}") from None


# parameterType -> the JSON value kinds the server accepts (validatePipelineJobInputs, v2_template.go@2.17.0).
PARAMETER_KINDS = {
    "NUMBER_DOUBLE": (int, float),
    "NUMBER_INTEGER": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}


class LocalJsonServer:
    """A threaded HTTP server on 127.0.0.1 that answers every request with ``respond``'s JSON; a context manager."""

    def __init__(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, payload = double.respond(self.command, self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _respond

            def log_message(self, *_) -> None:
                pass

        return Handler


class KfpApiDouble(LocalJsonServer):
    def __init__(
        self,
        *,
        multi_user: bool = False,
        version: str = "2.17.0",
        token: str = "token-team-a",
        namespace: str = "team-a",
    ):
        self.multi_user, self.version = multi_user, version
        self.token, self.namespace = token, namespace
        self.tokens: dict[str, set[str]] = {token: {namespace}}  # token -> namespaces it may use
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.faults: dict[tuple[str, str], Refusal] = {}  # (method, path) -> refusal for the next such request
        self.protos = minimum_protos()
        self._ids = itertools.count(1)
        super().__init__()

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # --- rules shared by every endpoint -------------------------------------------------------------

    def _namespace(self, namespace: str | None) -> str:
        """Single-user servers drop any namespace (ReplaceNamespace, resource/resource_manager.go@2.17.0)."""
        return (namespace or "") if self.multi_user else ""

    def _authorize(self, headers: dict, namespace: str) -> None:
        """Multi-user: identity from the bearer token (auth/authenticator_token_review.go@2.17.0), then a
        SubjectAccessReview in the namespace (ResourceManager.IsAuthorized, resource_manager.go@2.17.0)."""
        if not self.multi_user:
            return
        value = headers.get("authorization", "")
        token = value[len("Bearer ") :] if value.startswith("Bearer ") else ""
        if token not in self.tokens:
            raise Refusal(
                UNAUTHENTICATED,
                "Failed to check authorization. User identity is empty in the request "
                "header: Request header error: there is no user identity header.",
            )
        if namespace not in self.tokens[token]:
            raise Refusal(
                DENIED,
                f"User 'system:serviceaccount:{namespace}:x' is not authorized with reason: "
                f"no RBAC policy matched (request: namespace {namespace!r})",
            )

    def _authorize_upload(self, headers: dict, namespace: str, message: str) -> None:
        """The upload server answers any authorization failure with 400 and its generic message
        (canUploadVersionedPipeline's callers, pipeline_upload_server.go@2.17.0)."""
        try:
            self._authorize(headers, namespace)
        except Refusal:
            raise Refusal(INVALID, message, upload=True) from None

    def _experiment(self, experiment_id: str) -> dict:
        if experiment_id not in self.experiments:
            raise Refusal(
                NOT_FOUND, f"Failed to get experiment: ResourceNotFoundError: Experiment {experiment_id} not found"
            )
        return self.experiments[experiment_id]

    def _pipeline(self, pipeline_id: str) -> dict:
        if pipeline_id not in self.pipelines:
            raise Refusal(NOT_FOUND, f"Failed to get pipeline: ResourceNotFoundError: Pipeline {pipeline_id} not found")
        return self.pipelines[pipeline_id]

    @staticmethod
    def _matches(item: dict, query: dict) -> bool:
        if "filter" not in query:
            return True
        predicates = json.loads(query["filter"][0]).get("predicates", [])
        supported = [p for p in predicates if p.get("key") == "display_name" and p.get("operation") in ("EQUALS", 1)]
        if len(supported) != len(predicates):
            raise Refusal(INVALID, f"the double implements display_name EQUALS filters only, got {predicates}")
        return all(item["display_name"] == (p.get("stringValue") or p.get("string_value")) for p in predicates)

    def _check_pipeline(self, document: dict, platform: dict | None) -> None:
        """Strict parse as the minimum backend does it (template/v2_template.go@2.15.0, NewV2SpecTemplate):
        schema 2.1.0, a name, a root; the platform spec, and each executor's KubernetesExecutorConfig as the
        Argo compiler reads it (v2/compiler/argocompiler/container.go@2.15.0)."""
        spec = _strict(self.protos["PipelineSpec"], document, f"invalid v2 pipeline spec (KFP {MINIMUM_BACKEND})")
        if spec.schema_version != "2.1.0":
            raise Refusal(
                INVALID,
                f"KFP only supports schema version 2.1.0, but the pipeline spec has version {spec.schema_version}",
            )
        if not spec.pipeline_info.name or not spec.HasField("root"):
            raise Refusal(INVALID, "invalid v2 pipeline spec: name is empty or root component is empty")
        if platform:
            parsed = _strict(
                self.protos["PlatformSpec"],
                platform,
                f"cannot unmarshal platform specific configs (KFP {MINIMUM_BACKEND})",
            )
            for name, config in parsed.platforms["kubernetes"].deployment_spec.executors.items():
                _strict(
                    self.protos["KubernetesExecutorConfig"],
                    json_format.MessageToDict(config),
                    f"executor {name}: invalid kubernetes executor config (KFP {MINIMUM_BACKEND})",
                )

    @staticmethod
    def _check_parameters(document: dict, parameters: dict) -> None:
        """Runtime parameters against the root inputs (validatePipelineJobInputs, v2_template.go@2.17.0)."""
        declared = document.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        for name, spec in declared.items():
            if name not in parameters:
                if not spec.get("isOptional") and "defaultValue" not in spec:
                    raise Refusal(
                        INVALID,
                        f"parameter {name} is not optional, yet has neither default value nor user provided value",
                    )
                continue
            kinds = PARAMETER_KINDS.get(spec.get("parameterType"), ())
            value = parameters[name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise Refusal(
                    INVALID, f"input parameter {name} requires type {spec.get('parameterType')}, but got {value!r}"
                )
        extra = sorted(set(parameters) - set(declared))
        if extra:
            raise Refusal(INVALID, f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")

    # --- endpoints ---------------------------------------------------------------------------------

    def handle(self, method: str, url: str, body: bytes, headers: dict) -> tuple[int, dict]:
        parsed = urlparse(url)
        path, query = parsed.path.removeprefix(PREFIX), parse_qs(parsed.query)
        self.requests.append((method, path, body))
        self.headers.append(headers)
        if (method, path) in self.faults:
            raise self.faults.pop((method, path))
        if (method, path) == ("GET", "/healthz"):  # no authentication: main.go@2.17.0 serves it outside gRPC
            return 200, {
                "commit_sha": "unknown",
                "tag_name": self.version,
                "multi_user": self.multi_user,
                "pipeline_store": "database",
            }
        if path in ("/pipelines/upload", "/pipelines/upload_version") and method == "POST":
            return 200, self._upload(path, query, body, headers)
        data = json.loads(body) if body else {}
        if (method, path) == ("GET", "/experiments"):
            namespace = self._experiment_namespace(query.get("namespace", [""])[0], headers)
            return 200, {
                "experiments": [
                    e for e in self.experiments.values() if e["namespace"] == namespace and self._matches(e, query)
                ]
            }
        if (method, path) == ("POST", "/experiments"):
            return 200, self._create_experiment(data, headers)
        if method == "GET" and path.startswith("/experiments/"):
            experiment = self._experiment(path.split("/")[2])
            self._authorize(headers, experiment["namespace"])
            return 200, experiment
        if (method, path) == ("GET", "/runs"):
            return 200, self._list_runs(query, headers)
        if (method, path) == ("POST", "/runs"):
            return 200, self._create_run(data, headers)
        if method == "GET" and path.startswith("/runs/"):
            run_id = path.split("/")[2]
            if run_id not in self.runs:
                raise Refusal(NOT_FOUND, f"Failed to get run: ResourceNotFoundError: Run {run_id} not found")
            self._authorize(headers, self.runs[run_id]["namespace"])
            return 200, self.runs[run_id]
        if (method, path) == ("GET", "/pipelines"):
            namespace = self._namespace(query.get("namespace", [""])[0])
            if (
                namespace
            ):  # reading shared pipelines needs no authorization (canAccessPipeline, pipeline_server.go@2.17.0)
                self._authorize(headers, namespace)
            return 200, {
                "pipelines": [
                    p for p in self.pipelines.values() if p["namespace"] == namespace and self._matches(p, query)
                ]
            }
        if method == "GET" and path.startswith("/pipelines/") and path.endswith("/versions"):
            pipeline = self._pipeline(path.split("/")[2])
            if pipeline["namespace"]:
                self._authorize(headers, pipeline["namespace"])
            return 200, {
                "pipeline_versions": [v for v in self.versions[pipeline["pipeline_id"]] if self._matches(v, query)]
            }
        if method == "GET" and path.startswith("/pipelines/"):
            pipeline = self._pipeline(path.split("/")[2])
            if pipeline["namespace"]:
                self._authorize(headers, pipeline["namespace"])
            return 200, pipeline
        raise Refusal(NOT_FOUND, "Not Found")  # grpc-gateway's answer to an unknown route

    def _experiment_namespace(self, namespace: str, headers: dict) -> str:
        """experiment_server.go@2.17.0, canAccessExperiment: multi-user refuses an empty namespace."""
        namespace = self._namespace(namespace)
        if self.multi_user and not namespace:
            raise Refusal(INVALID, "An experiment cannot have an empty namespace in multi-user mode")
        self._authorize(headers, namespace)
        return namespace

    def _create_experiment(self, data: dict, headers: dict) -> dict:
        namespace = self._experiment_namespace(data.get("namespace") or "", headers)
        name = data.get("display_name") or ""
        if not name:
            raise Refusal(INVALID, "Experiment name is empty. Please specify a valid experiment name")
        # Name and namespace are unique together (model/experiment.go, storage/experiment_store.go@2.17.0).
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            raise Refusal(
                EXISTS, f"Failed to create a new experiment. The name {name} already exists. Please specify a new name"
            )
        experiment = {
            "experiment_id": self._new_id("experiment"),
            "display_name": name,
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _list_runs(self, query: dict, headers: dict) -> dict:
        """By experiment (its namespace is checked) or by namespace, needed in multi-user mode (canAccessRun)."""
        experiment_id = query.get("experiment_id", [""])[0]
        if experiment_id:
            namespace = self._experiment(experiment_id)["namespace"]
        else:
            namespace = self._namespace(query.get("namespace", [""])[0])
            if self.multi_user and not namespace:
                raise Refusal(INVALID, "A run cannot have an empty namespace in multi-user mode")
        self._authorize(headers, namespace)
        runs = [
            r
            for r in self.runs.values()
            if self._matches(r, query)
            and (r["experiment_id"] == experiment_id if experiment_id else r["namespace"] == namespace)
        ]
        return {**self._page(runs, query, "runs"), "total_size": len(runs)}

    @staticmethod
    def _page(items: list, query: dict, key: str) -> dict:
        """One page, as list.go@2.17.0 cuts it: page_size 0 means 20, at most 200, negative refused;
        a client that ignores next_page_token sees only the first page."""
        size = int(query.get("page_size", ["0"])[0] or 0)
        if size < 0:
            raise Refusal(INVALID, f"The page size should be greater than 0. Got {size}")
        size = min(size or 20, 200)
        start = int(query.get("page_token", ["0"])[0] or 0)
        page = {key: items[start : start + size]}
        if start + size < len(items):
            page["next_page_token"] = str(start + size)
        return page

    def _create_run(self, data: dict, headers: dict) -> dict:
        experiment = self._experiment(data.get("experiment_id") or "")
        # The run takes its experiment's namespace (canAccessRun, run_server.go@2.17.0).
        if self.multi_user and not experiment["namespace"]:
            raise Refusal(INVALID, "A run cannot have an empty namespace in multi-user mode")
        self._authorize(headers, experiment["namespace"])
        job = data.get("pipeline_spec") or {}
        document = job.get("pipeline_spec")
        if not isinstance(document, dict):
            raise Refusal(INVALID, "no pipeline spec is provided")
        self._check_pipeline(document, job.get("platform_spec"))
        self._check_parameters(document, (data.get("runtime_config") or {}).get("parameters") or {})
        run = {**data, "run_id": self._new_id("run"), "state": "PENDING", "namespace": experiment["namespace"]}
        self.runs[run["run_id"]] = run
        return run

    def _uploaded_file(self, body: bytes, headers: dict) -> tuple[str, bytes]:
        """The multipart form field ``uploadfile`` (FormFileKey, pipeline_upload_server.go@2.17.0)."""
        content_type = headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise Refusal(INVALID, "Failed to read pipeline from file", upload=True)
        form = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=HTTP)
        for part in form.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_filename() or "", part.get_payload(decode=True)
        raise Refusal(INVALID, "Failed to read pipeline from file", upload=True)

    def _pipeline_file(self, filename: str, content: bytes) -> tuple[dict, dict | None]:
        """ReadPipelineFile (server/util.go@2.17.0): .yaml/.yml/.json by name; .zip/.tar.gz by magic bytes
        (not implemented by the double: refused), anything else refused; then the strict spec parse."""
        if not filename.endswith((".yaml", ".yml", ".json")):
            raise Refusal(INVALID, "Failed to read a pipeline spec file", upload=True)
        try:
            documents = [d for d in yaml.safe_load_all(content) if d]
        except yaml.YAMLError:
            raise Refusal(INVALID, "Failed to read a pipeline spec file", upload=True) from None
        specs = [d for d in documents if "pipelineInfo" in d]
        platforms = [d for d in documents if "platforms" in d]
        if len(specs) != 1 or len(platforms) > 1:
            raise Refusal(
                INVALID,
                "invalid v2 pipeline spec: expected one pipeline spec and at most one platform spec",
                upload=True,
            )
        try:
            self._check_pipeline(specs[0], platforms[0] if platforms else None)
        except Refusal as refusal:
            raise Refusal(INVALID, str(refusal), upload=True) from None
        return specs[0], platforms[0] if platforms else None

    def _upload(self, path: str, query: dict, body: bytes, headers: dict) -> dict:
        filename, content = self._uploaded_file(body, headers)
        self._pipeline_file(filename, content)
        # buildPipelineName (pipeline_server.go@2.17.0): query `name`, else `display_name`, else the file name.
        name = query.get("name", [""])[0] or query.get("display_name", [""])[0] or filename
        if path == "/pipelines/upload":
            namespace = self._namespace(query.get("namespace", [""])[0])
            if namespace:  # an upload without a namespace is shared and goes unchecked (canUploadVersionedPipeline)
                self._authorize_upload(headers, namespace, "Failed to create a pipeline")
            if any(p["display_name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
                # model/pipeline.go@2.17.0: (name, namespace) unique; the upload server answers 409.
                raise Refusal(EXISTS, "Failed to create a pipeline and a pipeline version", upload=True)
            pipeline = {"pipeline_id": self._new_id("pipeline"), "display_name": name, "namespace": namespace}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self.versions[pipeline["pipeline_id"]] = [
                {
                    "pipeline_version_id": self._new_id("version"),
                    "pipeline_id": pipeline["pipeline_id"],
                    "display_name": name,
                }
            ]
            return pipeline
        pipeline_id = query.get("pipelineid", [""])[0]
        if pipeline_id not in self.pipelines:  # FetchNamespaceFromPipelineId fails: 400, not 404
            raise Refusal(INVALID, "Failed to create a pipeline version", upload=True)
        if self.pipelines[pipeline_id]["namespace"]:
            self._authorize_upload(
                headers, self.pipelines[pipeline_id]["namespace"], "Failed to create a pipeline version"
            )
        if any(v["display_name"] == name for v in self.versions[pipeline_id]):
            # model/pipeline_version.go@2.17.0: (pipeline id, name) unique; 409 from the upload server.
            raise Refusal(EXISTS, "Failed to create a pipeline version", upload=True)
        version = {"pipeline_version_id": self._new_id("version"), "pipeline_id": pipeline_id, "display_name": name}
        self.versions[pipeline_id].append(version)
        return version

    def respond(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        try:
            return self.handle(method, path, body, headers)
        except Refusal as refusal:
            return refusal.status, refusal.body()
        except (ValueError, KeyError, TypeError) as error:  # a malformed body: InvalidArgument
            return 400, Refusal(INVALID, f"invalid request body: {error}").body()
