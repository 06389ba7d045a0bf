"""Kubernetes Events for condition transitions: what `kubectl describe ftj` shows people."""

from __future__ import annotations

import hashlib
from typing import Any

from .status.conditions import Change

# Conditions whose True is bad news, and those whose False is.
_WARNING_WHEN_TRUE = {"Failed"}
_WARNING_WHEN_FALSE = {"ReferencesResolved", "Evaluated", "Published", "ArtifactVerified", "ServingCompatible"}
# A FineTuneJob condition's first value that only says that nothing has happened yet. The status shows it;
# an Event of its own would tell nobody anything, and every new job set four of them at once: a third of
# the API writes of its first reconcile, while other jobs waited for theirs (make bench-operator).
_NOTHING_YET = {
    ("Created", "Creating"),
    ("Running", "NotStarted"),
    ("Running", "PodsPending"),
    ("Succeeded", "Pending"),
    ("Succeeded", "Training"),
    ("Failed", "NoFailure"),
    ("Suspended", "NotSuspended"),
}


def worth_an_event(change: Change) -> bool:
    """Every transition is, but not a condition's first "nothing yet" (what it moves to next is)."""
    condition = change.condition
    return change.previous_status is not None or (condition.type, condition.reason) not in _NOTHING_YET


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
