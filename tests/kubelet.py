"""What a kubelet writes to a pod's status, for the tiers whose tests play the kubelet (e2e, in-process)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def finished_pod_status(
    container: str, exit_code: int, message: str = "", conditions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The final status of a pod whose only container ``container`` exited with ``exit_code`` (and its
    termination ``message``): Succeeded on 0, Failed otherwise; ``conditions`` besides Ready."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {
        "exitCode": exit_code,
        "reason": "Error" if exit_code else "Completed",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    status = {
        "name": container,
        "image": "trainer",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"terminated": terminated},
    }
    ready = {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
    return {
        "phase": "Failed" if exit_code else "Succeeded",
        "conditions": [ready, *(conditions or [])],
        "containerStatuses": [status],
    }
