"""A local HTTP double of the few Kubernetes API calls `kubetune doctor` makes, answering as the API server.

Reads of Secrets, ConfigMaps and ServiceAccounts, the node list, and LocalSubjectAccessReviews, whose
body it checks as the API server does (kubernetes/kubernetes pkg/apis/authorization/validation/validation.go,
ValidateLocalSubjectAccessReview, and pkg/registry/authorization/localsubjectaccessreview/rest.go, read at
commits 04d851f and 00bdb3f). Missing objects are 404 Status objects, refused calls 403, a missing or wrong
token 401. Every request is recorded.
"""

from __future__ import annotations

import json
import re

import yaml
from kfp_double import LocalJsonServer

OBJECT = re.compile(r"^/api/v1/namespaces/([^/]+)/(secrets|configmaps|serviceaccounts)/([^/]+)$")
REVIEW = re.compile(r"^/apis/authorization\.k8s\.io/v1/namespaces/([^/]+)/localsubjectaccessreviews$")


def status(code: int, reason: str, message: str, details: dict | None = None) -> tuple[int, dict]:
    """A metav1.Status, the body of every refusal."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return code, body


class KubeApiDouble(LocalJsonServer):
    def __init__(self, *, token: str = "kube-token", user: str = "system:serviceaccount:kubetune:doctor"):
        self.token, self.user = token, user
        self.objects: set[tuple[str, str, str]] = set()  # (resource, namespace, name)
        self.grants: set[tuple[str, str, str, str, str, str]] = (
            set()
        )  # (user, namespace, verb, group, resource, name or "")
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) the doctor's own account may not do
        self.nodes: dict[str, dict[str, str]] = {}  # node name -> allocatable
        self.requests: list[tuple[str, str, dict | None]] = []
        super().__init__()

    def kubeconfig(self, path) -> str:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.host}}],
            "users": [{"name": "doctor", "user": {"token": self.token}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "doctor"}}],
        }
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def grant(self, namespace: str, account: str, verb: str, resource: str, group: str = "", name: str = "") -> None:
        self.grants.add((f"system:serviceaccount:{namespace}:{account}", namespace, verb, group, resource, name))

    def _allowed(self, user: str, attributes: dict) -> bool:
        key = (
            user,
            attributes.get("namespace", ""),
            attributes.get("verb", ""),
            attributes.get("group", ""),
            attributes.get("resource", ""),
        )
        return (*key, "") in self.grants or (*key, attributes.get("name", "")) in self.grants

    def handle(self, method: str, path: str, headers: dict, body: dict | None) -> tuple[int, dict]:
        self.requests.append((method, path, body))
        if headers.get("authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        match = OBJECT.match(path)
        if method == "GET" and match:
            namespace, resource, name = match.groups()
            if ("get", resource) in self.forbidden:
                return status(
                    403,
                    "Forbidden",
                    f'{resource} "{name}" is forbidden: User "{self.user}" cannot get '
                    f'resource "{resource}" in API group "" in the namespace "{namespace}"',
                    {"name": name, "kind": resource},
                )
            if (resource, namespace, name) not in self.objects:
                return status(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            return 200, {"kind": resource, "metadata": {"name": name, "namespace": namespace}}
        if method == "GET" and path == "/api/v1/nodes":
            if ("list", "nodes") in self.forbidden:
                return status(
                    403,
                    "Forbidden",
                    f'nodes is forbidden: User "{self.user}" cannot list resource "nodes" '
                    'in API group "" at the cluster scope',
                )
            return 200, {
                "kind": "NodeList",
                "apiVersion": "v1",
                "items": [
                    {"metadata": {"name": name}, "status": {"allocatable": allocatable}}
                    for name, allocatable in self.nodes.items()
                ],
            }
        match = REVIEW.match(path)
        if method == "POST" and match:
            return self._review(match.group(1), body or {})
        return status(404, "NotFound", "the server could not find the requested resource")

    def _review(self, namespace: str, review: dict) -> tuple[int, dict]:
        if ("create", "localsubjectaccessreviews") in self.forbidden:
            return status(
                403,
                "Forbidden",
                f"localsubjectaccessreviews.authorization.k8s.io is forbidden: User "
                f'"{self.user}" cannot create resource "localsubjectaccessreviews"',
            )
        if review.get("kind") != "LocalSubjectAccessReview" or review.get("apiVersion") != "authorization.k8s.io/v1":
            return status(
                400,
                "BadRequest",
                f"expected authorization.k8s.io/v1 LocalSubjectAccessReview, got {review.get('kind')}",
            )
        metadata = dict(review.get("metadata") or {})
        if metadata.setdefault("namespace", namespace) != namespace:  # the generic create handler's check
            return status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        spec = review.get("spec", {})
        attributes = spec.get("resourceAttributes")
        invalid = [
            message
            for wrong, message in (
                (set(metadata) - {"namespace"}, "metadata: Invalid value: must be empty except for namespace"),
                (
                    attributes is None,
                    "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or "
                    "resourceAttributes must be specified",
                ),
                (
                    spec.get("nonResourceAttributes"),
                    "spec.nonResourceAttributes: Invalid value: disallowed on this kind of request",
                ),
                (
                    not spec.get("user") and not spec.get("groups"),
                    'spec.user: Invalid value: "": at least one of user or group must be specified',
                ),
                (
                    (attributes or {}).get("namespace", "") != namespace,
                    "spec.resourceAttributes.namespace: Invalid value: must match metadata.namespace",
                ),
            )
            if wrong
        ]
        if invalid:
            return status(
                422, "Invalid", f"LocalSubjectAccessReview.authorization.k8s.io is invalid: {'; '.join(invalid)}"
            )
        allowed = self._allowed(spec.get("user", ""), attributes)
        return 201, {
            **review,
            "status": {"allowed": allowed, **({} if allowed else {"reason": "no RBAC policy matched"})},
        }

    def respond(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        try:
            review = json.loads(body) if body else None
        except ValueError:
            return status(400, "BadRequest", "the body of the request was not valid JSON")
        return self.handle(method, path.split("?")[0], headers, review)
