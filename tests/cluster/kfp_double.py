"""A local HTTP double of the KFP v2beta1 REST API: it answers what kfp.Client asks and records it.

Only the calls kubetune makes are implemented; every request is checked (JSON bodies, filters,
multipart uploads) and kept in ``requests`` for the tests to inspect. It is a double: no pipeline runs.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


class KfpApiDouble:
    def __init__(self):
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, bytes]] = []
        self._ids = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KfpApiDouble:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    @staticmethod
    def _matches(item: dict, query: dict) -> bool:
        if "filter" not in query:
            return True
        (predicate,) = json.loads(query["filter"][0])["predicates"]
        assert predicate["key"] == "display_name" and predicate["operation"] in ("EQUALS", 1), predicate
        return item["display_name"] == (predicate.get("stringValue") or predicate.get("string_value"))

    def handle(self, method: str, url: str, body: bytes, content_type: str) -> tuple[int, dict]:
        parsed = urlparse(url)
        path, query = parsed.path.removeprefix(PREFIX), parse_qs(parsed.query)
        self.requests.append((method, path, body))
        if (method, path) == ("GET", "/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/experiments"):
            return 200, {"experiments": [e for e in self.experiments.values() if self._matches(e, query)]}
        if (method, path) == ("POST", "/experiments"):
            data = json.loads(body)
            assert data["display_name"], data
            experiment = {"experiment_id": self._new_id("experiment"), "display_name": data["display_name"]}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("GET", "/runs"):
            runs = [r for r in self.runs.values()
                    if r["experiment_id"] == query["experiment_id"][0] and self._matches(r, query)]
            return 200, {"runs": runs, "total_size": len(runs)}
        if (method, path) == ("POST", "/runs"):
            data = json.loads(body)
            assert data["experiment_id"] in self.experiments, "run in an unknown experiment"
            assert data["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"].startswith("kubetune-")
            assert {"experiment_spec", "segment"} <= set(data["runtime_config"]["parameters"])
            run = {**data, "run_id": self._new_id("run"), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if (method, path) == ("GET", "/pipelines"):
            return 200, {"pipelines": [p for p in self.pipelines.values() if self._matches(p, query)]}
        if (method, path) == ("POST", "/pipelines/upload"):
            assert content_type.startswith("multipart/form-data") and b"pipelineInfo" in body
            pipeline = {"pipeline_id": self._new_id("pipeline"), "display_name": query["name"][0]}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self.versions[pipeline["pipeline_id"]] = [{"pipeline_version_id": self._new_id("version"),
                                                       "display_name": query["name"][0]}]
            return 200, pipeline
        if method == "GET" and path.startswith("/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[2]
            return 200, {"pipeline_versions": [v for v in self.versions[pipeline_id] if self._matches(v, query)]}
        if (method, path) == ("POST", "/pipelines/upload_version"):
            assert content_type.startswith("multipart/form-data") and b"pipelineInfo" in body
            version = {"pipeline_version_id": self._new_id("version"), "display_name": query["name"][0]}
            self.versions[query["pipelineid"][0]].append(version)
            return 200, version
        return 404, {"error": f"the double does not implement {method} {path}"}

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, payload = double.handle(method, self.path, body, self.headers.get("Content-Type", ""))
                except AssertionError as error:
                    status, payload = 400, {"error": f"the double rejected the request: {error}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._respond("GET")

            def do_POST(self) -> None:
                self._respond("POST")

            def log_message(self, *_) -> None:
                pass

        return Handler
