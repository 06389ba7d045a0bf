"""A Warning Event on the FineTuneJob when its trainer reports a damaged checkpoint. Pure but for the one create."""

from __future__ import annotations

import hashlib
from typing import Any

from finetune_core.api import CheckpointFallback

from ..kube import Kube

REASON = "CheckpointDamaged"


def checkpoint_fallback_event(finetunejob: dict[str, Any], fallback: CheckpointFallback, now: str) -> dict[str, Any]:
    """The Event for ``fallback``; its message holds only the report's numbers and reason code (no tenant text)."""
    metadata = finetunejob["metadata"]
    resumed = (
        f"resumed from step {fallback.to_step}"
        if fallback.to_step is not None
        else "no checkpoint was usable: started over from step 0"
    )
    message = f"checkpoint step-{fallback.from_step} failed its check ({fallback.reason}); {resumed}"
    key = f"{metadata['uid']}{REASON}{fallback.from_step}{fallback.to_step}{fallback.reason}{now}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{metadata['name']}.{hashlib.sha256(key.encode()).hexdigest()[:12]}",
            "namespace": metadata["namespace"],
        },
        "involvedObject": {
            "apiVersion": finetunejob["apiVersion"],
            "kind": finetunejob["kind"],
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "reason": REASON,
        "message": message,
        "type": "Warning",
        "source": {"component": "finetune-operator"},
        "reportingComponent": "finetune-operator",
        "reportingInstance": "finetune-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def record_checkpoint_fallback(
    kube: Kube, finetunejob: dict[str, Any], fallback: CheckpointFallback | None, now: str
) -> None:
    if fallback is not None:
        kube.create_event(checkpoint_fallback_event(finetunejob, fallback, now))
