"""What a FineTuneJob's status is, given what the operator observed: its training Job, the Job's
pods and anything that blocks it. Pure: no I/O, the same inputs give the same status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_core.api import (
    ExitCode,
    FinalSummary,
    FineTuneJob,
    FineTuneJobStatus,
    describe_exit_code,
    verdict_from_numbers,
)
from finetune_core.api.finetunejob import ArtifactStatus, ModelStatus
from pydantic import ValidationError

from ..naming import KUEUE_LABELS, TRAINER_CONTAINER
from ..render.owner import controlled_by
from . import kueue
from .conditions import Change, get_condition, is_true, set_condition

MAX_MESSAGE = 2048

REASON_BY_EXIT_CODE = {
    ExitCode.CONFIG_ERROR: "ConfigurationError",
    ExitCode.DATA_ERROR: "DataError",
    ExitCode.GATE_FAILED: "GateFailed",
}


# The gate's verdict as the Evaluated condition: Warned is True (published, with a warning event).
EVALUATED = {
    "Passed": ("True", "GatePassed"),
    "Warned": ("True", "GateWarned"),
    "Skipped": ("True", "GateSkipped"),
    "Failed": ("False", "GateFailed"),
}


@dataclass(frozen=True)
class Blocker:
    """Something that keeps the job from starting: a missing Secret, an unusable setting."""

    reason: str  # CamelCase, e.g. SecretNotFound
    message: str


@dataclass(frozen=True)
class Observation:
    job: FineTuneJob
    training_job: dict[str, Any] | None
    pods: list[dict[str, Any]]  # as listed by label: anyone's pods may carry the labels
    now: str
    blockers: list[Blocker] = field(default_factory=list)
    # Kueue's view, for a job with the queue label whose Workload may have changed (None: no Workload yet)
    queue: kueue.QueueState | None = None


@dataclass(frozen=True)
class Termination:
    pod: str
    exit_code: int
    message: str
    finished_at: str

    def describe(self) -> str:
        text = f"pod {self.pod} exited with code {self.exit_code} ({describe_exit_code(self.exit_code)})"
        if self.message.strip():
            text += f": {self.message.strip()}"
        return text


def is_finished(status: FineTuneJobStatus) -> bool:
    """Succeeded and Failed are terminal: a finished job is never restarted."""
    return is_true(status.conditions, "Succeeded") or is_true(status.conditions, "Failed")


def is_settled(status: FineTuneJobStatus) -> bool:
    """Finished with its outcome recorded: failed, or succeeded with its publication decided (published, or
    refused by the gate). Nothing more happens to it unless it changes, so the periodic resync leaves it be."""
    if is_true(status.conditions, "Failed"):
        return True
    if not is_true(status.conditions, "Succeeded"):
        return False
    published = get_condition(status.conditions, "Published")
    return published is not None and (published.status == "True" or published.reason == "GateFailed")


def references_settled(job: FineTuneJob) -> bool:
    """Whether what the job refers to need not be looked up again: all of it was found for the current spec
    (a reference is only ever added by a spec change), or the job finished and needs none of it."""
    if is_finished(job.status):
        return True
    resolved = get_condition(job.status.conditions, "ReferencesResolved")
    return (
        resolved is not None and resolved.status == "True" and resolved.observed_generation == job.metadata.generation
    )


def phase_on_report(phase: str | None) -> str | None:
    """The phase a progress report moves the job to: a report proves the trainer runs, so a Pending job is
    Running from then on, even before the operator sees its pod Running. None: the phase stays."""
    return "Running" if phase in (None, "Pending") else None


def _reported_since(status: FineTuneJobStatus, pods: list[dict[str, Any]]) -> bool:
    """Whether a progress report arrived after the newest of ``pods`` was created: it came from a pod that
    runs now, not from an attempt before a restart."""
    updated = status.progress.updated_at if status.progress else None
    created = [p["metadata"].get("creationTimestamp") or "" for p in pods]
    return bool(updated and created) and updated >= max(created)


def pods_of(
    training_job: dict[str, Any] | None, pods: list[dict[str, Any]], owner_uid: str | None
) -> list[dict[str, Any]]:
    """The pods of the training Job the FineTuneJob ``owner_uid`` controls, and no other: termination messages
    and states are believed only along that chain of controllers, checked by UID. A pod that merely
    carries the labels (a tenant's, another controller's) or belongs to an earlier Job of the same
    name is not the job's."""
    if training_job is None or not controlled_by(training_job, owner_uid):
        return []
    job_uid = training_job["metadata"].get("uid")
    return [pod for pod in pods if controlled_by(pod, job_uid)]


def last_termination(pods: list[dict[str, Any]]) -> Termination | None:
    """The trainer's exit of the most recently failed pod."""
    found: list[Termination] = []
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") == TRAINER_CONTAINER and terminated and terminated.get("exitCode", 0) != 0:
                found.append(
                    Termination(
                        pod=pod["metadata"]["name"],
                        exit_code=int(terminated["exitCode"]),
                        message=terminated.get("message") or "",
                        finished_at=terminated.get("finishedAt") or "",
                    )
                )
    return max(found, key=lambda t: t.finished_at) if found else None


def final_summary(pods: list[dict[str, Any]]) -> FinalSummary | None:
    """The summary a trainer that exited 0 left in its termination message (global rank 0 writes one)."""
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") != TRAINER_CONTAINER or not terminated or terminated.get("exitCode") != 0:
                continue
            try:
                return FinalSummary.model_validate_json(terminated.get("message") or "")
            except ValidationError:
                continue  # an older trainer, or a rank that writes none
    return None


def _adopt(status: FineTuneJobStatus, summary: FinalSummary) -> None:
    """What the final progress push would have said, had it arrived."""
    status.artifact = ArtifactStatus.model_validate(summary.artifact.model_dump())
    status.evaluation = status.evaluation or summary.evaluation
    if summary.model_revision and not (status.model and status.model.revision):
        status.model = ModelStatus(revision=summary.model_revision)


def _disrupted(pods: list[dict[str, Any]]) -> int:
    return sum(
        1
        for pod in pods
        if pod.get("status", {}).get("phase") == "Failed"
        and any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )
    )


def job_condition(training_job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """A batch/v1 Job's condition of ``type_`` while it is True."""
    for condition in training_job.get("status", {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def _failure(training_job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    condition = job_condition(training_job, "Failed") or job_condition(training_job, "FailureTarget") or {}
    termination = last_termination(pods)
    reason = condition.get("reason") or "JobFailed"
    if termination is not None and termination.exit_code in REASON_BY_EXIT_CODE:
        reason = REASON_BY_EXIT_CODE[ExitCode(termination.exit_code)]
    parts = [f"training Job failed ({condition.get('reason', 'Failed')})"]
    if condition.get("message"):
        parts.append(condition["message"])
    if termination is not None:
        parts.append(termination.describe())
    return reason, _clip("; ".join(parts))


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _unschedulable(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return condition.get("message") or "unschedulable"
    return None


# Container states that do not pass by themselves: the user has something to fix.
STUCK_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)


def _stuck(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return waiting["reason"], f"pod {pod['metadata']['name']}, container {container.get('name')}{detail}"
    return None


def _active(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p.get("status", {}).get("phase") in ("Pending", "Running")
    ]


def compute_status(observation: Observation) -> tuple[FineTuneJobStatus, list[Change]]:
    job = observation.job
    status = job.status.model_copy(deep=True)
    generation = job.metadata.generation
    changes: list[Change] = []

    def condition(type_: str, value: str, reason: str, message: str) -> None:
        change = set_condition(status.conditions, type_, value, reason, message, observation.now, generation)
        if change is not None:
            changes.append(change)

    status.observed_generation = generation
    blockers = observation.blockers
    if blockers:
        condition("ReferencesResolved", "False", blockers[0].reason, _clip("; ".join(b.message for b in blockers)))
    else:
        condition("ReferencesResolved", "True", "AllFound", "everything the job refers to exists")

    pods = pods_of(observation.training_job, observation.pods, job.metadata.uid)
    if status.artifact is None and (summary := final_summary(pods)) is not None:
        _adopt(status, summary)
    status.evaluation = verdict_from_numbers(job.spec.evaluation.gate, status.evaluation)

    if status.evaluation is not None and status.evaluation.gate:
        verdict, message = status.evaluation.gate, status.evaluation.message or ""
        value, reason = EVALUATED[verdict]
        condition("Evaluated", value, reason, _clip(message or f"gate {verdict.lower()}"))

    if is_finished(job.status):
        # Terminal: the Job may be gone (ttlSecondsAfterFinished) and nothing may bring it back.
        return _finish(status), changes

    training_job = observation.training_job
    if training_job is None:
        if blockers:
            condition(
                "Created", "False", blockers[0].reason, _clip(f"not created until this is fixed: {blockers[0].message}")
            )
        else:
            condition("Created", "False", "Creating", "creating the training Job")
        condition("Running", "False", "NotStarted", "no training Job yet")
        condition("Succeeded", "Unknown", "Pending", "the job has not started")
        status.phase = "Pending"
        return status, changes

    name = training_job["metadata"]["name"]
    nodes = training_job["spec"].get("completions", 1)
    job_status = training_job.get("status", {})
    status.job_name = name
    # Pods failed by a disruption (drain, preemption, eviction) are retried without counting in the Job's
    # status.failed (podFailurePolicy Ignore); they are restarts all the same. Never lower than before:
    # a replaced Job starts counting at 0 again, and disrupted pods are removed in time.
    status.restarts = max(status.restarts or 0, int(job_status.get("failed") or 0) + _disrupted(pods))
    condition("Created", "True", "JobCreated", f"created Job {name} with {nodes} indexed pod(s)")

    complete = job_condition(training_job, "Complete")
    failed = job_condition(training_job, "Failed") or job_condition(training_job, "FailureTarget")
    queue = next((training_job["metadata"].get("labels", {}).get(k) for k in KUEUE_LABELS[:1]), None)
    if queue and kueue.workload_may_have_changed(training_job, queue, status.queue):
        _record_queue(status, queue, observation.queue, condition)  # else as recorded: nothing was read

    if complete is not None or failed is not None:
        # Finished while the operator was not looking: the Job knows when it started.
        status.start_time = status.start_time or job_status.get("startTime")
        if status.queue is not None:
            # Kueue releases a finished Job's quota; the queue has nothing more to say about it.
            status.queue = status.queue.model_copy(update={"state": "Finished"})
    if complete is not None:
        status.phase = "Succeeded"
        status.completion_time = (
            job_status.get("completionTime") or complete.get("lastTransitionTime") or observation.now
        )
        condition("Running", "False", "JobFinished", "training finished")
        condition("Failed", "False", "TrainingSucceeded", "training succeeded")
        condition("Succeeded", "True", "TrainingSucceeded", f"Job {name} completed")
        return _finish(status), changes

    if failed is not None:
        reason, message = _failure(training_job, pods)
        status.phase = "Failed"
        status.completion_time = failed.get("lastTransitionTime") or observation.now
        condition("Running", "False", "JobFinished", "training stopped")
        condition("Failed", "True", reason, message)
        condition("Succeeded", "False", reason, message)
        return status, changes

    condition("Failed", "False", "NoFailure", "no unrecoverable failure")
    condition("Succeeded", "Unknown", "Training", "training has not finished")
    if training_job["spec"].get("suspend"):
        status.phase = "Suspended"
        if job.spec.suspend:
            condition("Suspended", "True", "JobSuspended", "suspended by spec.suspend; pods are stopped")
        elif queue:
            admitted = get_condition(status.conditions, "Admitted")
            condition("Suspended", "True", kueue.suspended_reason(observation.queue), admitted.message)
        else:
            condition("Suspended", "True", "JobSuspended", "the training Job is suspended")
        condition("Running", "False", "Suspended", "the job is suspended")
        return status, changes

    if queue and observation.queue is not None and observation.queue.state == "Evicted":
        # Kueue took the quota back and is about to suspend the Job: its pods are still there.
        message = get_condition(status.conditions, "Admitted").message
        condition("Suspended", "False", "Evicting", f"{message}; Kueue is suspending the Job")
    elif queue:
        condition("Suspended", "False", "Admitted", get_condition(status.conditions, "Admitted").message)
    else:
        condition("Suspended", "False", "NotSuspended", "the job is not suspended")

    active = _active(pods)
    running = [p for p in active if p["status"].get("phase") == "Running"]
    if running:
        status.phase = "Running"
        status.start_time = status.start_time or job_status.get("startTime") or observation.now
        condition("Running", "True", "PodsRunning", f"{len(running)} of {nodes} training pod(s) running")
        return status, changes

    if active and _reported_since(status, active):
        status.phase = "Running"
        status.start_time = status.start_time or job_status.get("startTime") or observation.now
        condition("Running", "True", "TrainerReporting", "the trainer reports progress")
        return status, changes

    if any(p.get("status", {}).get("phase") == "Succeeded" for p in pods) and not active:
        # The trainer exited 0; the Job controller has yet to mark the Job Complete (a moment).
        status.phase = "Running"
        condition("Running", "True", "Completing", "the training pods finished; completing the Job")
        return status, changes

    status.phase = "Pending"
    if message := _unschedulable(active):
        condition("Running", "False", "Unschedulable", _clip(message))
    elif stuck := _stuck(active):
        condition("Running", "False", stuck[0], _clip(stuck[1]))
    elif status.restarts and (termination := last_termination(pods)):
        condition("Running", "False", "Restarting", _clip(f"retrying after {termination.describe()}"))
    else:
        condition("Running", "False", "PodsPending", "waiting for the training pods to start")
    return status, changes


def _record_queue(status: FineTuneJobStatus, local_queue: str, state: kueue.QueueState | None, condition) -> None:
    """status.queue and the Admitted and Preempted conditions, from Kueue's Workload."""
    status.queue = kueue.queue_status(local_queue, state, status.queue)
    condition("Admitted", *kueue.admitted_condition(local_queue, state, status.queue.cluster_queue))
    if state is not None and state.preempted is not None:
        reason, message = state.preempted
        condition("Preempted", "True", reason, _clip(f"preempted by Kueue ({reason}): {message}"))
    elif is_true(status.conditions, "Preempted") and state is not None and state.state == "Admitted":
        condition("Preempted", "False", "Readmitted", "admitted again after its preemption")


def _finish(status: FineTuneJobStatus) -> FineTuneJobStatus:
    """A succeeded job's progress is complete, whatever the last report said."""
    if status.phase == "Succeeded" and status.progress is not None:
        progress = status.progress.model_copy(update={"percent": 100, "eta_seconds": 0, "eta": "0s"})
        if progress.total_steps:
            progress = progress.model_copy(update={"step": max(progress.step, progress.total_steps)})
        status.progress = progress
    return status


def phase_of(status: FineTuneJobStatus) -> str:
    return status.phase or "Pending"


def condition_reason(status: FineTuneJobStatus, type_: str) -> str | None:
    found = get_condition(status.conditions, type_)
    return found.reason if found else None
