"""Pod status as a kubelet writes it: container states, conditions, IPs. Pure builders, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .envvars import POD_IP
from .node import now

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL = (SUCCEEDED, FAILED)
MAX_MESSAGE_BYTES = 4096  # the kubelet's limit on a termination message
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclass
class ContainerRecord:
    """What the agent knows of one container; ``state`` is the API's {"waiting"|"running"|"terminated": {...}}."""

    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        return self.state["terminated"]["exitCode"] if "terminated" in self.state else None

    def waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def started(self, pid: int, started_at: str) -> None:
        if "terminated" in self.state:
            self.last_state = self.state
            self.restart_count += 1
        self.container_id = f"nodeagent://{pid}"
        self.state = {"running": {"startedAt": started_at}}

    def terminated(self, exit_code: int, reason: str, message: str, started_at: str | None, finished_at: str) -> None:
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at}
        if message:
            terminated["message"] = message
        if self.container_id:
            terminated["containerID"] = self.container_id
        self.state = {"terminated": terminated}

    def to_api(self, init: bool) -> dict[str, Any]:
        ready = self.exit_code == 0 if init else self.running
        status = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": ready,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def termination_message(written: str, policy: str, exit_code: int, log_tail: str) -> str:
    """The file the process wrote, or (FallbackToLogsOnError, failed, file empty) the end of its log."""
    if written.strip():
        return written.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")
    if policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])
        return lines.encode()[-FALLBACK_LOG_BYTES:].decode(errors="ignore")
    return ""


def pod_status(
    phase: str,
    init: list[ContainerRecord],
    main: list[ContainerRecord],
    start_time: str,
    previous: list[dict[str, Any]] | None,
    volumes_ready: bool,
) -> dict[str, Any]:
    terminal = phase in TERMINAL
    incomplete = [record.name for record in init if record.exit_code != 0]
    unready = [record.name for record in main if not record.running]

    def condition(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        found = next((c for c in previous or [] if c.get("type") == type_ and c.get("status") == status), None)
        condition = {"type": type_, "status": status, "lastProbeTime": None}
        condition["lastTransitionTime"] = found.get("lastTransitionTime") if found else now()
        if not ok and reason:
            condition.update(reason=reason, message=message)
        return condition

    not_ready = (
        ("PodCompleted", "")
        if terminal
        else ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    )
    conditions = [
        condition("PodReadyToStartContainers", volumes_ready and not terminal),
        condition(
            "Initialized",
            not incomplete,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        condition("Ready", not unready, *not_ready),
        condition("ContainersReady", not unready, *not_ready),
        condition("PodScheduled", True),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": POD_IP,
        "hostIPs": [{"ip": POD_IP}],
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": start_time,
        "containerStatuses": [record.to_api(init=False) for record in main],
    }
    if init:
        status["initContainerStatuses"] = [record.to_api(init=True) for record in init]
    return status
