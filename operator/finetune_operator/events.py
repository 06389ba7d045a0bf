"""Kubernetes Events for condition transitions: what `kubectl describe ftj` shows people."""

from __future__ import annotations

import hashlib
from typing import Any

from .status.conditions import Change

# Conditions whose True is bad news, and those whose False is.
_WARNING_WHEN_TRUE = {"Failed"}
_WARNING_WHEN_FALSE = {"ReferencesResolved", "Evaluated", "Published", "ArtifactVerified", "ServingCompatible"}


def event_type(change: Change) -> str:
    condition = change.condition
    if condition.type in _WARNING_WHEN_TRUE and condition.status == "True":
        return "Warning"
    if condition.type in _WARNING_WHEN_FALSE and condition.status == "False":
        return "Warning"
    if condition.type == "Created" and condition.status == "False" and condition.reason != "Creating":
        return "Warning"
    return "Normal"


def event_for(obj: dict[str, Any], change: Change, now: str) -> dict[str, Any]:
    metadata = obj["metadata"]
    condition = change.condition
    digest = hashlib.sha1(
        f"{metadata['uid']}{condition.type}{condition.status}{condition.reason}{now}".encode(), usedforsecurity=False
    )
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{metadata['name']}.{digest.hexdigest()[:12]}", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "reason": condition.reason,
        "message": f"{condition.type}={condition.status}: {condition.message}"[:1024],
        "type": event_type(change),
        "source": {"component": "finetune-operator"},
        "reportingComponent": "finetune-operator",
        "reportingInstance": "finetune-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
