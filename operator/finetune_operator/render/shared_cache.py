"""The namespace's shared model cache: a ReadWriteMany claim the operator creates, one per tenant namespace.

A claim is namespaced, so a namespace's jobs share downloads and two namespaces never share bytes: what one
tenant's credentials fetched is never read by another's pods. The operator creates the claim (labelled as
ours) and never uses a claim of that name without the label: a tenant's own claim is left alone, and that
namespace's jobs run without a cache. The preflight mounts it read-write (it fills, checks and evicts), the
training pods read-only. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ..naming import MANAGED_BY, SHARED_CACHE_ANNOTATION
from ..settings import Settings

CACHE_CLAIM = "finetune-model-cache"
CACHE_LABEL = "finetune.dev/shared-cache"
CACHE_DIR = "/var/cache/finetune-shared"
VOLUME = "shared-model-cache"


def render_cache_claim(namespace: str, settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": settings.cache_size}},
    }
    if settings.cache_storage_class is not None:
        spec["storageClassName"] = settings.cache_storage_class  # "": no dynamic provisioning (a PV made for it)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": CACHE_CLAIM,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, CACHE_LABEL: "true"},
        },
        "spec": spec,
    }


def is_ours(claim: dict[str, Any] | None) -> bool:
    labels = (claim or {}).get("metadata", {}).get("labels") or {}
    return labels.get(CACHE_LABEL) == "true" and labels.get("app.kubernetes.io/managed-by") == MANAGED_BY


def cache_annotation(shared_cache: bool) -> dict[str, str]:
    """Said on a preflight or training Job that mounts the cache: what a later reconcile reads back (the Jobs'
    cache keeps no pod template)."""
    return {SHARED_CACHE_ANNOTATION: "true"} if shared_cache else {}


def mounts_cache(job_manifest: dict[str, Any]) -> bool:
    """Whether the operator made this Job with the namespace's cache mounted (cache_annotation)."""
    return (job_manifest.get("metadata", {}).get("annotations") or {}).get(SHARED_CACHE_ANNOTATION) == "true"


def mount_cache(pod: dict[str, Any], settings: Settings, *, writable: bool) -> None:
    """Add the cache's volume, mount and environment to a rendered pod spec (its first container)."""
    pod["volumes"].append(
        {"name": VOLUME, "persistentVolumeClaim": {"claimName": CACHE_CLAIM, "readOnly": not writable}}
    )
    container = pod["containers"][0]
    container["volumeMounts"].append({"name": VOLUME, "mountPath": CACHE_DIR, "readOnly": not writable})
    env = [{"name": "FINETUNE_SHARED_CACHE_DIR", "value": CACHE_DIR}]
    if writable:
        env.append({"name": "FINETUNE_SHARED_CACHE_MAX_BYTES", "value": str(settings.cache_max_bytes)})
    else:
        env.append({"name": "FINETUNE_SHARED_CACHE_READONLY", "value": "1"})
    container["env"] = [*container.get("env", []), *env]
