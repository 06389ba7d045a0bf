"""Where Kueue has a job, read from the Workload Kueue made for its training Job. Pure: no I/O.

Kueue (v1beta2) keeps its view in the Workload's conditions: QuotaReserved (the ClusterQueue set
quota aside), Admitted (quota and admission checks), Evicted (taken back: Preempted,
PodsReadyTimeout, ...), Preempted (why: InClusterQueue, InCohortReclamation, ...) and Requeued;
status.admission names the ClusterQueue, and status.schedulingStats counts evictions by reason.
Only what those fields say is reported; Kueue's own messages are clipped, since they may carry
names a tenant chose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from finetune_core.api.finetunejob import QueueStatus

from ..render.owner import controlled_by

# The label Kueue puts on a Workload with the UID of the job it was made for: the operator lists
# Workloads by it, so it reads only its own jobs' Workloads.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
MAX_KUEUE_MESSAGE = 512


@dataclass(frozen=True)
class QueueState:
    """What Kueue says about one job, in the FineTuneJob's terms."""

    state: str  # Queued, Admitted, Inadmissible or Evicted: the QUEUE column
    reason: str  # Kueue's reason, CamelCase
    message: str
    cluster_queue: str | None
    admission_time: str | None
    preemptions: int
    preempted: tuple[str, str] | None  # (reason, message) while Kueue's Preempted condition is True


def workload_may_have_changed(training_job: dict[str, Any], local_queue: str, previous: QueueStatus | None) -> bool:
    """Whether Kueue's Workload can say what status.queue does not, so that it is worth a request.

    While the training Job is suspended (it waits for quota, or was evicted), only the Workload tells what
    changes; once Kueue admitted it, the Job runs, and nothing Kueue does next leaves the Job as it is: an
    eviction suspends it, and the Job's own watch event brings the job back. So an admitted, running job
    costs no request however often it is reconciled."""
    if previous is None or previous.local_queue != local_queue:
        return True
    return bool(training_job["spec"].get("suspend")) or previous.state != "Admitted"


def workload_selector(training_job: dict[str, Any]) -> str:
    return f"{JOB_UID_LABEL}={training_job['metadata']['uid']}"


def workload_of(training_job: dict[str, Any], workloads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Workload the training Job controls (checked by UID: the label alone proves nothing), newest first."""
    uid = training_job["metadata"].get("uid")
    owned = [w for w in workloads if controlled_by(w, uid) and not w["metadata"].get("deletionTimestamp")]
    return max(owned, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None)


def _condition(workload: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in workload.get("status", {}).get("conditions") or [] if c.get("type") == type_), None)


def _true(condition: dict[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"


def _clip(message: str | None) -> str:
    text = " ".join((message or "").split())
    return text if len(text) <= MAX_KUEUE_MESSAGE else text[: MAX_KUEUE_MESSAGE - 3] + "..."


def preemptions(workload: dict[str, Any]) -> int:
    stats = workload.get("status", {}).get("schedulingStats") or {}
    return sum(int(e.get("count") or 0) for e in stats.get("evictions") or [] if e.get("reason") == "Preempted")


def queue_state(workload: dict[str, Any]) -> QueueState:
    status = workload.get("status", {})
    admission = status.get("admission") or {}
    cluster_queue = admission.get("clusterQueue")
    quota = _condition(workload, "QuotaReserved")
    admitted = _condition(workload, "Admitted")
    evicted = _condition(workload, "Evicted")
    preempted_condition = _condition(workload, "Preempted")
    preempted = None
    if _true(preempted_condition):
        preempted = (preempted_condition.get("reason") or "Preempted", _clip(preempted_condition.get("message")))
    count = preemptions(workload)

    def state(name: str, condition: dict[str, Any] | None, default_reason: str, admission_time: str | None = None):
        condition = condition or {}
        return QueueState(
            state=name,
            reason=condition.get("reason") or default_reason,
            message=_clip(condition.get("message")),
            cluster_queue=cluster_queue,
            admission_time=admission_time,
            preemptions=count,
            preempted=preempted,
        )

    if _true(evicted):
        # Evicted and still holding quota: Kueue is stopping the job (its pods are going); then requeued.
        return state("Evicted", evicted, "Evicted")
    if _true(admitted):
        return state("Admitted", admitted, "Admitted", admitted.get("lastTransitionTime"))
    if quota is not None and quota.get("reason") == "Inadmissible":
        # The LocalQueue or the ClusterQueue is missing or stopped: no amount of waiting admits it.
        return state("Inadmissible", quota, "Inadmissible")
    return state("Queued", quota, "Pending")


def with_cluster_queue(state: QueueState, cluster_queue: str | None) -> QueueState:
    """While a Workload waits, only its LocalQueue knows the ClusterQueue."""
    return replace(state, cluster_queue=cluster_queue[:253] if cluster_queue else None)


def shown_state(state: QueueState) -> str:
    if state.state == "Evicted" and state.reason == "Preempted":
        return "Preempted"
    return state.state


def queue_status(local_queue: str, state: QueueState | None, previous: QueueStatus | None) -> QueueStatus:
    """status.queue: what Kueue says now, with what it no longer says (an evicted Workload loses its
    admission) kept from before. The ClusterQueue is kept only while the job names the same LocalQueue."""
    known = previous.cluster_queue if previous and previous.local_queue == local_queue else None
    if state is None:  # Kueue has not made the Workload yet
        return QueueStatus(
            state="Queued",
            local_queue=local_queue,
            cluster_queue=known,
            admission_time=previous.admission_time if previous else None,
            preemptions=previous.preemptions if previous else 0,
        )
    return QueueStatus(
        state=shown_state(state),
        local_queue=local_queue,
        cluster_queue=state.cluster_queue or known,
        admission_time=state.admission_time or (previous.admission_time if previous else None),
        # Never lower: a replaced training Job gets a new Workload that starts counting at 0.
        preemptions=max(state.preemptions, previous.preemptions if previous else 0),
    )


def admitted_condition(local_queue: str, state: QueueState | None, cluster_queue: str | None) -> tuple[str, str, str]:
    """(status, reason, message) of the Admitted condition: Kueue's reason, our words around its message."""
    where = f"LocalQueue {local_queue}" + (f" (ClusterQueue {cluster_queue})" if cluster_queue else "")
    if state is None:
        return "False", "WorkloadPending", f"waiting for Kueue to create the job's Workload in {where}"
    detail = f": {state.message}" if state.message else ""
    if state.state == "Admitted":
        return "True", state.reason, f"admitted by Kueue from {where}"
    if state.state == "Inadmissible":
        hint = (
            "; create that LocalQueue in this namespace or name one that exists in the kueue.x-k8s.io/queue-name label"
            if "LocalQueue" in state.message
            else ""
        )
        return "False", state.reason, f"Kueue cannot admit it from {where}{detail}{hint}"
    if state.state == "Evicted":
        return "False", state.reason, f"evicted by Kueue ({state.reason}); waiting to be admitted again{detail}"
    return "False", state.reason, f"waiting in {where} for quota{detail}"


def suspended_reason(state: QueueState | None) -> str:
    """The Suspended condition's reason while Kueue holds the job."""
    if state is None or state.state in ("Queued", "Admitted"):
        return "QueuedByKueue"
    return shown_state(state)
