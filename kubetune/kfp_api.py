"""The thin boundary to the Kubeflow Pipelines API: submit runs and register pipelines, idempotently.

Everything here goes through ``kfp.Client``; nothing else in kubetune talks to the KFP server. Runs are
found again by their display name, which carries the spec's hash and the segment, so submitting the
same thing twice starts one run. Tests run it against a local HTTP double of the API.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

from kubetune.errors import UserError

__all__ = ["KfpError", "Submission", "KfpGateway"]


class KfpError(UserError):
    """The KFP API could not be reached or refused a request; the message names the host."""


@dataclass(frozen=True)
class Submission:
    run_id: str
    run_name: str
    created: bool


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "stringValue": name}]})


class KfpGateway:
    """One KFP API endpoint. In a pod, kfp.Client picks up the ServiceAccount token by itself."""

    def __init__(self, host: str, *, namespace: str | None = None):
        import kfp

        self.host = host
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._client = self._call("connect", kfp.Client, host=host, namespace=namespace or "kubeflow")

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # urllib3/kfp_server_api raise many unrelated types
            reason = getattr(error, "reason", None) or str(error).splitlines()[0]
            raise KfpError(f"KFP API at {self.host} failed to {what}: {str(reason)[:200]}. "
                           "Check --host / KUBETUNE_KFP_HOST and that the API is reachable.") from None

    def _experiment_id(self, name: str) -> str:
        try:
            return self._client.get_experiment(experiment_name=name).experiment_id
        except ValueError:  # not found
            return self._call("create the experiment", self._client.create_experiment, name).experiment_id

    def find_run(self, experiment_id: str, run_name: str) -> str | None:
        runs = self._call("list runs", self._client.list_runs, experiment_id=experiment_id, filter=_by_name(run_name))
        return runs.runs[0].run_id if runs.runs else None

    def submit(
        self, package: str, *, experiment_name: str, run_name: str, arguments: dict, service_account: str | None = None
    ) -> Submission:
        """Start the run unless a run of that name already exists in the KFP experiment."""
        experiment_id = self._call("find the experiment", self._experiment_id, experiment_name)
        existing = self.find_run(experiment_id, run_name)
        if existing:
            return Submission(existing, run_name, created=False)
        result = self._call(
            "create the run", self._client.create_run_from_pipeline_package,
            package, arguments=arguments, run_name=run_name, experiment_id=experiment_id,
            service_account=service_account,
        )
        return Submission(result.run_id, run_name, created=True)

    def register_pipeline(self, package: str, *, name: str, version: str) -> tuple[str, bool]:
        """Upload ``package`` as pipeline ``name`` version ``version``; returns (pipeline id, created)."""
        pipeline_id = self._call("look up the pipeline", self._client.get_pipeline_id, name)
        if pipeline_id is None:
            pipeline = self._call("upload the pipeline", self._client.upload_pipeline, package, pipeline_name=name)
            pipeline_id = pipeline.pipeline_id
        versions = self._call("list pipeline versions", self._client.list_pipeline_versions, pipeline_id,
                              filter=_by_name(version))
        if versions.pipeline_versions:
            return pipeline_id, False
        self._call("upload the pipeline version", self._client.upload_pipeline_version, package,
                   pipeline_version_name=version, pipeline_id=pipeline_id)
        return pipeline_id, True
