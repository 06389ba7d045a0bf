"""The operator's only door to the Kubernetes API: a small, synchronous client over plain REST (rest.py).

Objects travel as plain dicts in the API's own JSON shape (camelCase), exactly as the builders
produce them and the status functions read them. Creates are idempotent: AlreadyExists means
another run of the same handler got there first, and the existing object is returned.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from finetune_core.api import GROUP, VERSION
from finetune_core.api.base import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN

from . import connection
from .rest import JSON, InvalidApiPath, KubeError, Observer, RestClient

log = logging.getLogger(__name__)

_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
# The API server's own default page size for kubectl; big lists come in pages, never in one answer.
PAGE_SIZE = 500


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
LEASES = Kind("coordination.k8s.io", "v1", "leases")
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
    "Lease": LEASES,
}


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
# No fallback to full objects for lists: a server that cannot answer metadata only says so (406).
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class Kube:
    def __init__(self, rest: RestClient):
        self.rest = rest

    @classmethod
    def connect(cls, kubeconfig: str | None = None, observe: Observer | None = None, pool_size: int = 16) -> Kube:
        """From --kubeconfig; else the pod's ServiceAccount; else KUBECONFIG or ~/.kube/config. ``pool_size``:
        connections kept open, one per thread that sends requests at once (more are opened, then dropped)."""
        return cls(RestClient(connection.load(kubeconfig), observe=observe, pool_size=pool_size))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = JSON,
        accept: str = JSON,
    ) -> dict[str, Any]:
        return self.rest.request(method, path, body, query or (), content_type, accept)

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", kind.path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Every matching object, read in pages of PAGE_SIZE; ``metadata_only``: apiVersion, kind and
        metadata of each (a PartialObjectMetadataList), for when the body is not needed."""
        path = kind.path(namespace)
        accept = METADATA_ONLY_LIST if metadata_only else JSON
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = [*query, ("limit", str(PAGE_SIZE))] + ([("continue", token)] if token else [])
            try:
                answer = self._call("GET", path, query=page, accept=accept)
            except KubeError as error:
                if error.status != 410 or not token:
                    raise
                # The continue token outlived etcd's compaction: list it whole, as client-go's pager does.
                return self._call("GET", path, query=query, accept=accept).get("items", [])
            items.extend(answer.get("items") or [])
            token = (answer.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

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

    def create(self, manifest: dict[str, Any], read_existing: bool = True) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; returns (object, created). An existing object of that name is returned as is, or,
        with ``read_existing`` False (a caller that reads a watch-fed cache), the 409 is raised."""
        kind = KINDS[manifest["kind"]]
        namespace = manifest["metadata"].get("namespace")
        try:
            return self._call("POST", kind.path(namespace), body=manifest), True
        except KubeError as error:
            if error.status != 409 or not read_existing:
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

    def replace(self, kind: Kind, namespace: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body`` over the object: optimistic concurrency, so ``body`` must carry the
        metadata.resourceVersion it was read at; a write in between is a KubeError with status 409."""
        if not body.get("metadata", {}).get("resourceVersion"):
            raise ValueError("replace needs metadata.resourceVersion: without it the write would be unconditional")
        return self._call("PUT", kind.path(namespace, name), body=body)

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
        return self._access_review(user, {"nonResourceAttributes": {"path": path, "verb": verb}})

    def resource_access_review(
        self, user: dict[str, Any], namespace: str, verb: str, group: str, resource: str
    ) -> dict[str, Any]:
        """May ``user`` (a TokenReview's status.user) ``verb`` ``resource`` of API group ``group`` in ``namespace``?"""
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        return self._access_review(user, {"resourceAttributes": attributes})

    def _access_review(self, user: dict[str, Any], attributes: dict[str, Any]) -> dict[str, Any]:
        """A SubjectAccessReview asked as ``user`` (name, uid, groups and extra: all of them, or a caller whose
        rights come from a group or an extra would be judged without them)."""
        spec = {
            "user": user.get("username", ""),
            "uid": user.get("uid", ""),
            "groups": user.get("groups") or [],
            "extra": user.get("extra") or {},
            **attributes,
        }
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return self._call("POST", SUBJECTACCESSREVIEWS.path(), body=body).get("status", {})
