"""The FineTuneJob's status from Kueue's Workload (kueue.x-k8s.io/v1beta2, as Kueue v0.17 writes it)."""

from __future__ import annotations

from typing import Any

from finetune_operator.status import kueue
from finetune_operator.status.observe import Observation, compute_status
from test_status import (
    LATER,
    NOW,
    QUEUE_LABEL,
    TRAINING_JOB_UID,
    condition,
    job_condition,
    make_job,
    message,
    pod,
    training_job,
)

PENDING_MESSAGE = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 4 more needed"
)


def kueue_condition(type_: str, status: str, reason: str, message: str = "", at: str = NOW) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def workload(
    *conditions: dict[str, Any],
    cluster_queue: str | None = None,
    evictions: list[dict[str, Any]] | None = None,
    owner_uid: str = TRAINING_JOB_UID,
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue, "podSetAssignments": []}
    if evictions:
        status["schedulingStats"] = {"evictions": evictions}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": "job-demo-1a2b3",
            "namespace": "team-a",
            "creationTimestamp": NOW,
            "labels": {kueue.JOB_UID_LABEL: TRAINING_JOB_UID},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "demo", "uid": owner_uid, "controller": True}
            ],
        },
        "spec": {"queueName": "gpu-queue"},
        "status": status,
    }


PENDING = workload(kueue_condition("QuotaReserved", "False", "Pending", PENDING_MESSAGE))
ADMITTED = workload(
    kueue_condition("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpus"),
    kueue_condition("Admitted", "True", "Admitted", "The workload is admitted", at=LATER),
    cluster_queue="gpus",
)
PREEMPTED = workload(
    kueue_condition("QuotaReserved", "False", "Pending", "Preempted to accommodate a workload (UID: x) in the CQ"),
    kueue_condition("Admitted", "False", "NoReservation", "The workload has no reservation"),
    kueue_condition("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x) in the CQ"),
    kueue_condition("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: x) in the CQ"),
    evictions=[{"reason": "Preempted", "underlyingCause": "", "count": 1}],
)
READMITTED = workload(
    kueue_condition("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpus"),
    kueue_condition("Admitted", "True", "Admitted", "The workload is admitted", at=LATER),
    kueue_condition("Evicted", "False", "QuotaReserved", "Previously: Preempted"),
    kueue_condition("Preempted", "False", "QuotaReserved", "Previously: Preempted"),
    cluster_queue="gpus",
    evictions=[{"reason": "Preempted", "underlyingCause": "", "count": 1}],
)
NO_LOCAL_QUEUE = workload(
    kueue_condition("QuotaReserved", "False", "Inadmissible", "LocalQueue gpu-queue doesn't exist"),
)


def observe_queued(job, state: kueue.QueueState | None, suspend: bool = True, pods=()):
    labels = {QUEUE_LABEL: "gpu-queue"}
    return compute_status(Observation(job, training_job(suspend=suspend, labels=labels), list(pods), NOW, [], state))


def test_the_workload_is_the_one_the_training_job_controls():
    stranger = workload(owner_uid="someone-else")
    assert kueue.workload_of(training_job(), [stranger]) is None
    assert kueue.workload_of(training_job(), [stranger, PENDING]) is PENDING


def test_workloads_are_selected_by_the_training_jobs_uid():
    assert kueue.workload_selector(training_job()) == f"kueue.x-k8s.io/job-uid={TRAINING_JOB_UID}"


def test_a_pending_workload_is_queued_with_kueues_reason_and_the_cluster_queue():
    state = kueue.with_cluster_queue(kueue.queue_state(PENDING), "gpus")
    status, _ = observe_queued(make_job(), state)
    assert status.phase == "Suspended"
    assert status.queue.state == "Queued" and status.queue.cluster_queue == "gpus"
    assert condition(status, "Admitted") == ("False", "Pending")
    assert condition(status, "Suspended") == ("True", "QueuedByKueue")
    assert "ClusterQueue gpus" in message(status, "Suspended")
    assert "4 more needed" in message(status, "Admitted")


def test_before_kueue_makes_the_workload_the_job_waits_for_it():
    status, _ = observe_queued(make_job(), None)
    assert status.queue.state == "Queued" and status.queue.local_queue == "gpu-queue"
    assert condition(status, "Admitted") == ("False", "WorkloadPending")


def test_an_admitted_workload_records_the_cluster_queue_and_admission_time():
    status, _ = observe_queued(make_job(), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    assert status.phase == "Running"
    assert status.queue.state == "Admitted"
    assert status.queue.cluster_queue == "gpus" and status.queue.admission_time == LATER
    assert condition(status, "Admitted") == ("True", "Admitted")
    assert condition(status, "Suspended") == ("False", "Admitted")


def test_a_missing_local_queue_says_what_to_do():
    status, _ = observe_queued(make_job(), kueue.queue_state(NO_LOCAL_QUEUE))
    assert status.queue.state == "Inadmissible"
    assert condition(status, "Admitted") == ("False", "Inadmissible")
    assert condition(status, "Suspended") == ("True", "Inadmissible")
    assert "create that LocalQueue in this namespace" in message(status, "Admitted")


def test_a_preempted_job_says_so_with_kueues_reason_and_counts_it():
    admitted, _ = observe_queued(make_job(), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    status, changes = observe_queued(make_job(admitted), kueue.queue_state(PREEMPTED))
    assert status.phase == "Suspended"
    assert status.queue.state == "Preempted" and status.queue.preemptions == 1
    assert status.queue.cluster_queue == "gpus"  # Kueue cleared the admission; the last one is kept
    assert condition(status, "Preempted") == ("True", "InClusterQueue")
    assert condition(status, "Suspended") == ("True", "Preempted")
    assert condition(status, "Admitted") == ("False", "Preempted")
    assert ("Preempted", "True") in [(c.condition.type, c.condition.status) for c in changes]


def test_readmission_after_preemption_clears_preempted_and_keeps_the_count():
    preempted, _ = observe_queued(make_job(), kueue.queue_state(PREEMPTED))
    status, _ = observe_queued(make_job(preempted), kueue.queue_state(READMITTED), suspend=False, pods=[pod()])
    assert status.queue.state == "Admitted" and status.queue.preemptions == 1
    assert condition(status, "Preempted") == ("False", "Readmitted")


def test_a_new_workload_never_lowers_the_preemption_count():
    preempted, _ = observe_queued(make_job(), kueue.queue_state(PREEMPTED))
    status, _ = observe_queued(make_job(preempted), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    assert status.queue.preemptions == 1


def test_kueues_messages_are_clipped():
    long = workload(kueue_condition("QuotaReserved", "False", "Pending", "x" * 5000))
    assert len(kueue.queue_state(long).message) <= kueue.MAX_KUEUE_MESSAGE


def test_a_job_without_the_queue_label_has_no_queue_status():
    status, _ = compute_status(Observation(make_job(), training_job(), [pod()], NOW, [], None))
    assert status.queue is None
    assert all(c.type not in ("Admitted", "Preempted") for c in status.conditions)


def test_an_evicted_job_whose_pods_still_run_says_kueue_is_suspending_it():
    status, _ = observe_queued(make_job(), kueue.queue_state(PREEMPTED), suspend=False, pods=[pod()])
    assert condition(status, "Suspended") == ("False", "Evicting")
    assert "Kueue is suspending the Job" in message(status, "Suspended")


def test_a_finished_job_leaves_the_queue():
    admitted, _ = observe_queued(make_job(), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    labels = {QUEUE_LABEL: "gpu-queue"}
    done = training_job(job_condition("Complete"), labels=labels, completion_time=LATER)
    status, _ = compute_status(Observation(make_job(admitted), done, [], LATER, [], kueue.queue_state(ADMITTED)))
    assert status.phase == "Succeeded"
    assert status.queue.state == "Finished" and status.queue.cluster_queue == "gpus"


def test_an_admitted_running_job_needs_no_workload_read_and_keeps_its_queue_status():
    admitted, _ = observe_queued(make_job(), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    running = training_job(suspend=False, labels={QUEUE_LABEL: "gpu-queue"})
    assert not kueue.workload_may_have_changed(running, "gpu-queue", admitted.queue)
    status, changes = observe_queued(make_job(admitted), None, suspend=False, pods=[pod()])
    assert status.queue == admitted.queue
    assert condition(status, "Admitted") == ("True", "Admitted")
    assert condition(status, "Suspended") == ("False", "Admitted")
    assert changes == []


def test_the_workload_is_read_while_the_job_waits_and_until_its_admission_is_recorded():
    suspended = training_job(suspend=True, labels={QUEUE_LABEL: "gpu-queue"})
    running = training_job(suspend=False, labels={QUEUE_LABEL: "gpu-queue"})
    queued, _ = observe_queued(make_job(), kueue.queue_state(PENDING))
    preempted, _ = observe_queued(make_job(), kueue.queue_state(PREEMPTED))
    admitted, _ = observe_queued(make_job(), kueue.queue_state(ADMITTED), suspend=False, pods=[pod()])
    assert kueue.workload_may_have_changed(running, "gpu-queue", None)
    assert kueue.workload_may_have_changed(suspended, "gpu-queue", admitted.queue)  # evicted: Kueue suspended it
    assert kueue.workload_may_have_changed(running, "gpu-queue", queued.queue)  # admitted: Kueue unsuspended it
    assert kueue.workload_may_have_changed(running, "gpu-queue", preempted.queue)  # admitted again
    assert kueue.workload_may_have_changed(running, "other-queue", admitted.queue)


def test_a_job_moved_to_another_local_queue_forgets_the_old_cluster_queue():
    queued, _ = observe_queued(make_job(), kueue.with_cluster_queue(kueue.queue_state(PENDING), "gpus"))
    moved = kueue.queue_status("other-queue", kueue.queue_state(NO_LOCAL_QUEUE), queued.queue)
    assert moved.local_queue == "other-queue" and moved.cluster_queue is None
