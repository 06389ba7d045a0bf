"""The operator's only door to the Kubernetes API: a thin, synchronous client over the official one.

Objects travel as plain dicts in the API's own JSON shape (camelCase), exactly as the builders
produce them and the status functions read them. Creates are idempotent: AlreadyExists means
another run of the same handler got there first, and the existing object is returned.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .api import GROUP, VERSION
from .api.base import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN

log = logging.getLogger(__name__)

_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
# What Kind.path builds: segments of the checked alphabet, never a query, a fragment or a dot segment.
_API_PATH = re.compile(r"(/[a-z0-9A-Z][-a-zA-Z0-9.]*)+")


class InvalidApiPath(ValueError):
    """A namespace, name or subresource that cannot be one segment of an API path: refused before any request.

    The value is not repeated in the message: it may come from a tenant, and messages reach logs.
    """


def _segment(value: str, pattern: re.Pattern[str], max_length: int, what: str) -> str:
    if not isinstance(value, str) or len(value) > max_length or pattern.fullmatch(value) is None:
        shown = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise InvalidApiPath(f"{what} ({shown}) is not a DNS-1123 {'label' if max_length == 63 else 'subdomain'}")
    # A checked value has nothing to escape: quoting is the second lock, should a pattern ever admit "/".
    return quote(value, safe="")


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The API path of the collection, an object or its subresource; InvalidApiPath for a malformed segment."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{_segment(namespace, _DNS_LABEL, 63, 'namespace')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{_segment(name, _DNS_SUBDOMAIN, 253, 'name')}"
        if subresource is not None:
            base += f"/{_segment(subresource, _DNS_LABEL, 63, 'subresource')}"
        return base


FINETUNEJOBS = Kind(GROUP, VERSION, "finetunejobs")
MODELADAPTERS = Kind(GROUP, VERSION, "modeladapters")
FINETUNEMODELS = Kind(GROUP, VERSION, "finetunemodels", namespaced=False)
NAMESPACES = Kind("", "v1", "namespaces", namespaced=False)
JOBS = Kind("batch", "v1", "jobs")
PODS = Kind("", "v1", "pods")
SERVICES = Kind("", "v1", "services")
CONFIGMAPS = Kind("", "v1", "configmaps")
SERVICEACCOUNTS = Kind("", "v1", "serviceaccounts")
SECRETS = Kind("", "v1", "secrets")
PVCS = Kind("", "v1", "persistentvolumeclaims")
EVENTS = Kind("", "v1", "events")
TOKENREVIEWS = Kind("authentication.k8s.io", "v1", "tokenreviews", namespaced=False)
SUBJECTACCESSREVIEWS = Kind("authorization.k8s.io", "v1", "subjectaccessreviews", namespaced=False)

KINDS = {
    "FineTuneJob": FINETUNEJOBS,
    "ModelAdapter": MODELADAPTERS,
    "Job": JOBS,
    "Pod": PODS,
    "Service": SERVICES,
    "ConfigMap": CONFIGMAPS,
    "ServiceAccount": SERVICEACCOUNTS,
    "Secret": SECRETS,
    "PersistentVolumeClaim": PVCS,
}


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str, body: str):
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod: the ServiceAccount's in-cluster config. Elsewhere: KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config(config_file=kubeconfig)


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client

    # -- raw requests ------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        if _API_PATH.fullmatch(path) is None:
            # Paths come from Kind.path; anything else (a query, "..", a percent escape) is a bug, refused here.
            raise InvalidApiPath("an API path must be segments of letters, digits, '-' and '.' only")
        method, url, headers, serialized, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": accept, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api_client.call_api(
                method, url, header_params=headers, body=serialized, _request_timeout=60
            )
        except ApiException as error:
            raise KubeError(error.status or 0, error.reason or "", error.body or "") from None
        data = response.read()
        if response.status >= 400:
            raise KubeError(response.status, response.reason or "", data.decode(errors="replace") if data else "")
        return json.loads(data) if data else {}

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", kind.path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._call("GET", kind.path(namespace), query=query).get("items", [])

    def exists(self, kind: Kind, namespace: str, name: str) -> bool:
        """Whether the object exists, reading its metadata only (a Secret's values never reach us here)."""
        try:
            self._call("GET", kind.path(namespace, name), accept=METADATA_ONLY)
            return True
        except KubeError as error:
            if error.status == 404:
                return False
            raise

    # -- writes ------------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; returns (object, created). An existing object of that name is returned as is."""
        kind = KINDS[manifest["kind"]]
        namespace = manifest["metadata"].get("namespace")
        try:
            return self._call("POST", kind.path(namespace), body=manifest), True
        except KubeError as error:
            if error.status != 409:
                raise
        existing = self.get(kind, namespace, manifest["metadata"]["name"])
        if existing is None:  # deleted in between: the next reconcile creates it
            raise KubeError(409, "Conflict", f"{manifest['kind']} {manifest['metadata']['name']} is being deleted")
        return existing, False

    def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return self._call(
            "PATCH", kind.path(namespace, name, subresource), body=patch, content_type="application/merge-patch+json"
        )

    def delete(self, kind: Kind, namespace: str, name: str, propagation: str = "Background") -> bool:
        try:
            self._call(
                "DELETE",
                kind.path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
            return True
        except KubeError as error:
            if error.status == 404:
                return False
            raise

    def create_event(self, event: dict[str, Any]) -> None:
        try:
            self._call("POST", EVENTS.path(event["metadata"]["namespace"]), body=event)
        except KubeError as error:
            # Events are for people; failing to record one must never fail a reconcile.
            log.warning("could not record event %s: %s", event.get("reason"), error)

    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        return self._call("POST", TOKENREVIEWS.path(), body=body).get("status", {})

    def subject_access_review(self, user: dict[str, Any], path: str, verb: str) -> dict[str, Any]:
        """May ``user`` (a TokenReview's status.user) ``verb`` the non-resource URL ``path``?"""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.get("username", ""),
                "uid": user.get("uid", ""),
                "groups": user.get("groups") or [],
                "extra": user.get("extra") or {},
                "nonResourceAttributes": {"path": path, "verb": verb},
            },
        }
        return self._call("POST", SUBJECTACCESSREVIEWS.path(), body=body).get("status", {})
