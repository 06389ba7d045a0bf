"""Verify a pvc:// artifact through a verification Job (render/verifier.py) and read back its result.

One Job per generation of the adapter's spec. When the adapter's status already holds that Job's
result and the reconcile still asks (a Failed adapter retried, a Ready one verified again), the Job
is replaced by a new one once it has been finished for a while: the files may have changed since.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from finetune_core.api import ModelAdapter

from ..context import Context, age
from ..kube import JOBS, PODS, PVCS
from ..render.owner import controlled_by
from ..render.verifier import VERIFIER_CONTAINER, artifact_path, render_verifier_job, verifier_job_name
from ..status.observe import job_condition
from .verification import Verification

log = logging.getLogger(__name__)

RETRY_AFTER = dt.timedelta(minutes=5)  # a broken artifact costs a pod every 5 minutes, not every resync


def _finished(job: dict[str, Any]) -> dict[str, Any] | None:
    """The Job's Complete or Failed condition, once it has one."""
    return job_condition(job, "Complete") or job_condition(job, "Failed")


def verify_on_volume(context: Context, adapter: ModelAdapter, generation: int | None) -> Verification | None:
    """The verification's result, or None while its pod has not finished (the Job is created if needed)."""
    namespace = adapter.metadata.namespace
    name = verifier_job_name(adapter.metadata.name, generation)
    job = context.caches[JOBS].get(namespace, name)  # watch-fed (managed-by): verifying costs no read per look
    if job is None or job["metadata"].get("deletionTimestamp"):
        if job is not None:
            return None
        claim, _ = artifact_path(adapter.spec.artifact.uri)
        if not context.kube.exists(PVCS, namespace, claim):  # no pod that waits forever for a claim
            message = f"PersistentVolumeClaim {claim} (spec.artifact.uri) not found in namespace {namespace}"
            return Verification(problem_reason="ClaimNotFound", problem_message=message)
        # One there all the same (its watch event on the way) fails this look with 409; the event brings the
        # adapter back with the Job in the cache. What is created goes into the cache: not created twice.
        created, _ = context.kube.create(
            render_verifier_job(adapter, generation, context.settings), read_existing=False
        )
        context.caches[JOBS].created(created)
        return None
    if not controlled_by(job, adapter.metadata.uid):
        message = f"a Job named {name} exists and is not this ModelAdapter's verification: delete it"
        return Verification(problem_reason="JobNameTaken", problem_message=message)
    finished = _finished(job)
    if finished is None:
        return None
    status = adapter.status
    result_taken = status.phase in ("Failed", "Ready") and status.observed_generation == generation
    if result_taken and age(finished.get("lastTransitionTime"), dt.timedelta(0)) > RETRY_AFTER:
        log.info("verifying %s/%s again with a new pod", namespace, adapter.metadata.name)
        context.kube.delete(JOBS, namespace, name)
        return None
    pods = context.kube.list(PODS, namespace, f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")
    return result_of(job, finished, pods)


def result_of(job: dict[str, Any], finished: dict[str, Any], pods: list[dict[str, Any]]) -> Verification:
    """What the Job's pod said in its termination message; a pod that said nothing is a failed check.
    Only the Job's own pods (controlled by its UID) speak: the label that lists them is anyone's to set."""
    for pod in (p for p in pods if controlled_by(p, job["metadata"].get("uid"))):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if container.get("name") != VERIFIER_CONTAINER or not terminated:
                continue
            message = (terminated.get("message") or "").strip()
            if terminated.get("exitCode") == 0:
                try:
                    return Verification.from_message(message)
                except ValueError as error:
                    return _failed(f"the verification pod {pod['metadata']['name']}: {error}")
            return _failed(
                f"the verification pod {pod['metadata']['name']} exited with code {terminated.get('exitCode')}: "
                f"{message[-500:] or terminated.get('reason') or 'no message'}"
            )
    reason = finished.get("reason") or finished.get("type")
    return _failed(f"Job {job['metadata']['name']} ended ({reason}) without a result: {finished.get('message') or ''}")


def _failed(message: str) -> Verification:
    return Verification(problem_reason="VerificationFailed", problem_message=message.strip())
