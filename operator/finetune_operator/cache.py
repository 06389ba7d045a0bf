"""Watch-fed caches of what the operator reads: its FineTuneJobs and ModelAdapters, the children it
creates (Jobs, pods, Services, ConfigMaps, ServiceAccounts), and the catalog's FineTuneModels.

kopf's watches (handlers.py) feed them; reconciles read them instead of sending a GET or a LIST, so a
reconcile that finds nothing to change costs no request at all. Each kind is watched with a server-side
label selector: objects that are not the operator's never reach it, however many the cluster holds.

What is kept of each object is what a reconcile reads (a pod's status, not its spec; never
managedFields): the memory follows the operator's own jobs. Readers treat what they get as read-only.

The caches are filled before any reconcile: kopf runs the index handlers that feed them for every
object of every kind's initial list before it runs any event handler, and the first event handler
marks them ready (``Caches.ready``), which the controllers wait for.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .kube import CONFIGMAPS, FINETUNEJOBS, FINETUNEMODELS, JOBS, MODELADAPTERS, PODS, SERVICEACCOUNTS, SERVICES, Kind
from .naming import JOB_LABEL, MANAGED_BY

Key = tuple[str, str]  # (namespace, name)

_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
)


def _metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    return {key: copy.deepcopy(metadata[key]) for key in _METADATA if key in metadata}


def _head(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": _metadata(obj)}


def whole(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Spec and status as they are (the operator's own resources), without managedFields."""
    rest = {key: copy.deepcopy(value) for key, value in obj.items() if key not in ("metadata",)}
    return {**rest, **_head(obj)}


def pod_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A pod's status (phase, conditions, container states): its spec is never read, and is most of it."""
    status = obj.get("status") or {}
    kept = {key: copy.deepcopy(status[key]) for key in ("phase", "conditions", "containerStatuses") if key in status}
    return {**_head(obj), "status": kept}


def job_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Job's spec without its pod template (suspend, completions...) and its status."""
    spec = {key: copy.deepcopy(value) for key, value in (obj.get("spec") or {}).items() if key != "template"}
    return {**_head(obj), "spec": spec, "status": copy.deepcopy(obj.get("status") or {})}


def config_map_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**_head(obj), "data": copy.deepcopy(obj.get("data") or {})}


def metadata_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Whether it exists, and whose it is: all a reconcile asks of a Service or a ServiceAccount."""
    return _head(obj)


@dataclass(frozen=True)
class Watched:
    """One kind the operator watches: the server-side label selector of its watch, and what is kept."""

    kind: Kind
    selector: str | None
    view: Callable[[Mapping[str, Any]], dict[str, Any]]


# Jobs: the training Jobs and the ModelAdapters' verification Jobs both carry managed-by; pods and the small
# children carry the job label. A tenant may set these labels on their own objects: those reach the cache,
# and the reconciles believe nothing of them that the UID-checked owner chain does not confirm.
# FineTuneModels are cluster-scoped and the admin's (a catalog of a few entries), all of them read by the
# catalog jobs' reconciles (keyed by ("", name)).
WATCHED = (
    Watched(FINETUNEJOBS, None, whole),
    Watched(MODELADAPTERS, None, whole),
    Watched(FINETUNEMODELS, None, whole),
    Watched(JOBS, f"app.kubernetes.io/managed-by={MANAGED_BY}", job_view),
    Watched(PODS, JOB_LABEL, pod_view),
    Watched(SERVICES, JOB_LABEL, metadata_view),
    Watched(CONFIGMAPS, JOB_LABEL, config_map_view),
    Watched(SERVICEACCOUNTS, JOB_LABEL, metadata_view),
)


def resource_version(obj: Mapping[str, Any]) -> int | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def is_newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether ``candidate`` may replace ``current``. Resource versions are etcd revisions in every API server
    the operator supports, so they order the versions of one name, even across a deletion; one that is
    not a number is taken as the latest."""
    if current is None:
        return True
    new, old = resource_version(candidate), resource_version(current)
    return new is None or old is None or new >= old


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str]) -> bool:
    labels = labels or {}
    return all(labels.get(key) == value for key, value in selector.items())


class Store:
    """The objects of one kind by (namespace, name). Thread-safe: kopf writes from its event loop, the
    controllers' workers read from their threads."""

    def __init__(self, view: Callable[[Mapping[str, Any]], dict[str, Any]] = whole):
        self._view = view
        self._lock = threading.Lock()
        self._items: dict[Key, dict[str, Any]] = {}

    @staticmethod
    def key_of(obj: Mapping[str, Any]) -> Key:
        metadata = obj.get("metadata") or {}
        return metadata.get("namespace") or "", metadata["name"]

    def observe(self, obj: Mapping[str, Any]) -> bool:
        """A watch event's object; returns whether it was kept (an older version than the cache's is not)."""
        kept = self._view(obj)
        key = self.key_of(kept)
        with self._lock:
            if not is_newer(kept, self._items.get(key)):
                return False
            self._items[key] = kept
            return True

    def forget(self, obj: Mapping[str, Any]) -> None:
        """A deletion: the cached object goes, unless a newer one of the same name replaced it already."""
        key = self.key_of(obj)
        with self._lock:
            current = self._items.get(key)
            if current is not None and (current["metadata"].get("uid") == (obj.get("metadata") or {}).get("uid")):
                del self._items[key]

    def created(self, obj: Mapping[str, Any]) -> None:
        """What a create returned: kept until its watch event arrives, so that the next reconcile does not
        create it again. Never over what the watch brought already."""
        kept = self._view(obj)
        key = self.key_of(kept)
        with self._lock:
            self._items.setdefault(key, kept)

    def written(self, obj: Mapping[str, Any]) -> None:
        """What a patch returned: kept when newer, so the next reconcile starts from what was written. An object
        the watch said is gone stays gone."""
        kept = self._view(obj)
        key = self.key_of(kept)
        with self._lock:
            current = self._items.get(key)
            same = current is not None and current["metadata"].get("uid") == kept["metadata"].get("uid")
            if same and is_newer(kept, current):
                self._items[key] = kept

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get((namespace, name))

    def select(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            return [
                obj
                for (ns, _), obj in self._items.items()
                if ns == namespace and matches(obj["metadata"].get("labels"), labels)
            ]

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            return iter(list(self._items.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Caches:
    """One Store per watched kind, and whether their initial lists are in."""

    def __init__(self, watched: tuple[Watched, ...] = WATCHED):
        self.watched = watched
        self._stores = {w.kind: Store(w.view) for w in watched}
        self.ready = threading.Event()

    def __getitem__(self, kind: Kind) -> Store:
        return self._stores[kind]

    def selectors(self) -> dict[Kind, str]:
        return {w.kind: w.selector for w in self.watched if w.selector}
