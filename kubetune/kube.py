"""The thin boundary to the Kubernetes API, for `kubetune doctor`: does an object exist, may an account
do something, which nodes offer GPUs. Nothing else in kubetune talks to the Kubernetes API.

In a pod (KUBERNETES_SERVICE_HOST set) it uses the pod's ServiceAccount; elsewhere the kubeconfig
(KUBECONFIG or ~/.kube/config). Object contents are never returned, so a Secret's data never leaves here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from kubetune.errors import UserError

__all__ = ["KubeApi", "KubeError", "Permission", "service_account_user"]

KINDS = {
    "secret": "read_namespaced_secret",
    "configmap": "read_namespaced_config_map",
    "serviceaccount": "read_namespaced_service_account",
}


class KubeError(UserError):
    """The Kubernetes API could not be reached or refused a request; the message names the server."""


@dataclass(frozen=True)
class Permission:
    """One thing an account may have to do: verb on resource (API group, optional object name)."""

    verb: str
    resource: str
    group: str = ""
    name: str | None = None

    def __str__(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {resource}" + (f" {self.name}" if self.name else "")


def service_account_user(namespace: str, name: str) -> tuple[str, list[str]]:
    """The user name and groups the API server gives a ServiceAccount's token."""
    return (
        f"system:serviceaccount:{namespace}:{name}",
        ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
    )


class KubeApi:
    def __init__(self):
        from kubernetes import client, config

        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                self._api = client.ApiClient(configuration)
            else:
                self._api = config.new_client_from_config(
                    config_file=os.environ.get("KUBECONFIG"), persist_config=False
                )
        except (config.ConfigException, OSError, TypeError) as error:
            raise KubeError(
                f"no Kubernetes API configuration: {error}. Run in a pod, or set KUBECONFIG "
                "to a kubeconfig for the cluster"
            ) from None
        self.server = self._api.configuration.host
        self._core = client.CoreV1Api(self._api)
        self._authorization = client.AuthorizationV1Api(self._api)

    def _call(self, what: str, function, /, *args, missing_ok: bool = False, **kwargs):
        """The raw response (never parsed into models); None for a 404 when ``missing_ok``."""
        from kubernetes.client.exceptions import ApiException

        try:
            return function(*args, _preload_content=False, _request_timeout=10, **kwargs)
        except ApiException as error:
            if missing_ok and error.status == 404:
                return None
            raise KubeError(
                f"Kubernetes API at {self.server} refused to {what}: HTTP {error.status} {_status_message(error)}"
            ) from None
        except Exception as error:  # noqa: BLE001 - urllib3 connection errors of many types
            raise KubeError(
                f"Kubernetes API at {self.server} failed to {what}: {str(error).splitlines()[0][:200]}. "
                "Check KUBECONFIG / the pod's network"
            ) from None

    def exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether ``kind`` (secret, configmap, serviceaccount) ``name`` exists; only 404 means no."""
        response = self._call(
            f"get {kind} {namespace}/{name}", getattr(self._core, KINDS[kind]), name, namespace, missing_ok=True
        )
        if response is None:
            return False
        response.release_conn()  # the body (a Secret's data) is never read
        return True

    def may(self, namespace: str, service_account: str, permission: Permission) -> bool:
        """A LocalSubjectAccessReview: namespaced, so a Role may grant this pod the right to ask."""
        from kubernetes import client

        user, groups = service_account_user(namespace, service_account)
        review = client.V1LocalSubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="LocalSubjectAccessReview",
            metadata=client.V1ObjectMeta(namespace=namespace),
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace,
                    verb=permission.verb,
                    group=permission.group,
                    resource=permission.resource,
                    name=permission.name,
                ),
            ),
        )
        response = self._call(
            f"review whether {user} may {permission}",
            self._authorization.create_namespaced_local_subject_access_review,
            namespace,
            review,
        )
        return bool(json.loads(response.data).get("status", {}).get("allowed"))

    def allocatable(self, resource: str) -> dict[str, int]:
        """Node name -> allocatable count of ``resource`` (e.g. nvidia.com/gpu), for nodes that have any."""
        response = self._call("list nodes", self._core.list_node)
        counts = {}
        for node in json.loads(response.data).get("items", []):
            value = node.get("status", {}).get("allocatable", {}).get(resource, "0")
            if value.isdigit() and int(value) > 0:
                counts[node["metadata"]["name"]] = int(value)
        return counts


def _status_message(error) -> str:
    try:
        return str(json.loads(error.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(error.reason or "")
