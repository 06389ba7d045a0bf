"""compute_status: the FineTuneJob's status from its training Job, the Job's pods and what blocks it."""

from __future__ import annotations

from typing import Any

import pytest
from catalog import edited, valid_job
from finetune_core.api import FinalSummary, FineTuneJob, FineTuneJobStatus
from finetune_operator.crdgen import finetunejob_crd
from finetune_operator.status.conditions import get_condition
from finetune_operator.status.observe import (
    MAX_MESSAGE,
    Blocker,
    Observation,
    compute_status,
    is_settled,
    last_termination,
    phase_on_report,
    pods_of,
    references_settled,
)

NAMESPACE = "team-a"
JOB_UID = "uid-1"  # the FineTuneJob's
TRAINING_JOB_UID = "uid-training-1"  # its training Job's
NOW = "2025-03-04T10:00:00Z"
LATER = "2025-03-04T11:00:00Z"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


# ---------------------------------------------------------------------------------------------
# factories, in the shape the API server returns


def make_job(
    status: FineTuneJobStatus | dict[str, Any] | None = None,
    suspend: bool = False,
    generation: int = 1,
) -> FineTuneJob:
    manifest = edited(
        valid_job("demo"),
        {"metadata.namespace": NAMESPACE, "metadata.uid": JOB_UID, "metadata.generation": generation},
    )
    manifest["spec"]["suspend"] = suspend
    if isinstance(status, FineTuneJobStatus):
        status = status.to_api()
    if status is not None:
        manifest["status"] = status
    return FineTuneJob.model_validate(manifest)


def controller(kind: str, name: str, uid: str, is_controller: bool = True) -> dict[str, Any]:
    api_version = "finetune.dev/v1alpha1" if kind == "FineTuneJob" else "batch/v1"
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": is_controller}


def job_condition(type_: str, reason: str | None = None, message: str = "", at: str = NOW) -> dict[str, Any]:
    condition = {"type": type_, "status": "True", "lastTransitionTime": at, "lastProbeTime": at}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def training_job(
    *conditions: dict[str, Any],
    suspend: bool = False,
    completions: int = 1,
    failed: int = 0,
    active: int = 0,
    start_time: str | None = None,
    completion_time: str | None = None,
    labels: dict[str, str] | None = None,
    owner_uid: str = JOB_UID,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if conditions:
        status["conditions"] = list(conditions)
    if failed:
        status["failed"] = failed
    if active:
        status["active"] = active
    if start_time:
        status["startTime"] = start_time
    if completion_time:
        status["completionTime"] = completion_time
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "demo",
            "namespace": NAMESPACE,
            "uid": TRAINING_JOB_UID,
            "labels": {"finetune.dev/job": "demo", **(labels or {})},
            "ownerReferences": [controller("FineTuneJob", "demo", owner_uid)],
        },
        "spec": {"completions": completions, "parallelism": completions, "suspend": suspend},
        "status": status,
    }


def pod(
    name: str = "demo-0-abcde",
    phase: str = "Running",
    exit_code: int | None = None,
    message: str = "",
    finished_at: str = NOW,
    unschedulable: str | None = None,
    deleting: bool = False,
    owner_references: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod of the training Job, or with ``owner_references``, a pod that only looks like one."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {"finetune.dev/job": "demo"},
        "ownerReferences": [controller("Job", "demo", TRAINING_JOB_UID)]
        if owner_references is None
        else owner_references,
    }
    if deleting:
        metadata["deletionTimestamp"] = NOW
    status: dict[str, Any] = {"phase": phase}
    if unschedulable is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        ]
    if exit_code is not None:
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Error", "finishedAt": finished_at}
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    elif phase == "Running":
        status["containerStatuses"] = [{"name": "trainer", "state": {"running": {"startedAt": NOW}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}


def observe(
    job: FineTuneJob,
    training: dict[str, Any] | None = None,
    pods: list[dict[str, Any]] | None = None,
    now: str = NOW,
    blockers: list[Blocker] | None = None,
) -> tuple[FineTuneJobStatus, list]:
    return compute_status(Observation(job, training, pods or [], now, blockers or []))


def condition(status: FineTuneJobStatus, type_: str) -> tuple[str, str]:
    found = get_condition(status.conditions, type_)
    assert found is not None, f"no {type_} condition in {[c.type for c in status.conditions]}"
    return found.status, found.reason


def message(status: FineTuneJobStatus, type_: str) -> str:
    return get_condition(status.conditions, type_).message


# ---------------------------------------------------------------------------------------------
# no Job yet


def test_without_a_job_and_blockers_the_job_is_being_created():
    status, _ = observe(make_job())
    assert status.phase == "Pending"
    assert condition(status, "ReferencesResolved") == ("True", "AllFound")
    assert condition(status, "Created") == ("False", "Creating")
    assert condition(status, "Running") == ("False", "NotStarted")
    assert condition(status, "Succeeded") == ("Unknown", "Pending")
    assert status.job_name is None


def test_a_blocker_keeps_the_job_from_being_created_and_names_the_missing_object():
    blockers = [Blocker("SecretNotFound", "Secret hf (spec.model.credentialsSecretRef) not found in namespace team-a")]
    status, _ = observe(make_job(), blockers=blockers)
    assert status.phase == "Pending"
    assert condition(status, "ReferencesResolved") == ("False", "SecretNotFound")
    assert "Secret hf" in message(status, "ReferencesResolved")
    assert condition(status, "Created") == ("False", "SecretNotFound")


def test_every_blocker_is_in_the_message_and_the_first_gives_the_reason():
    blockers = [
        Blocker("SecretNotFound", "Secret a missing"),
        Blocker("PersistentVolumeClaimNotFound", "claim b missing"),
    ]
    status, _ = observe(make_job(), blockers=blockers)
    assert condition(status, "ReferencesResolved") == ("False", "SecretNotFound")
    assert message(status, "ReferencesResolved") == "Secret a missing; claim b missing"


def test_a_long_blocker_message_is_clipped():
    status, _ = observe(make_job(), blockers=[Blocker("SecretNotFound", "x" * 5000)])
    text = message(status, "ReferencesResolved")
    assert len(text) == MAX_MESSAGE
    assert text.endswith("...")


def test_a_blocker_appearing_after_the_job_exists_is_reported_without_deleting_anything():
    blockers = [Blocker("SecretNotFound", "Secret hf missing")]
    status, _ = observe(make_job(), training_job(), [pod(phase="Running")], blockers=blockers)
    assert condition(status, "ReferencesResolved") == ("False", "SecretNotFound")
    assert condition(status, "Created") == ("True", "JobCreated")
    assert status.phase == "Running"


# ---------------------------------------------------------------------------------------------
# Job created, pods not running yet


def test_a_created_job_with_pending_pods_is_pending():
    status, _ = observe(make_job(), training_job(completions=2), [pod(phase="Pending")])
    assert status.phase == "Pending"
    assert status.job_name == "demo"
    assert condition(status, "Created") == ("True", "JobCreated")
    assert message(status, "Created") == "created Job demo with 2 indexed pod(s)"
    assert condition(status, "Running") == ("False", "PodsPending")
    assert condition(status, "Failed") == ("False", "NoFailure")
    assert condition(status, "Succeeded") == ("Unknown", "Training")
    assert condition(status, "Suspended") == ("False", "NotSuspended")
    assert status.start_time is None


def test_a_created_job_without_pods_yet_is_pending():
    status, _ = observe(make_job(), training_job(), [])
    assert status.phase == "Pending"
    assert condition(status, "Running") == ("False", "PodsPending")


def test_an_unschedulable_pod_shows_the_schedulers_message():
    scheduler = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    status, _ = observe(make_job(), training_job(), [pod(phase="Pending", unschedulable=scheduler)])
    assert status.phase == "Pending"
    assert condition(status, "Running") == ("False", "Unschedulable")
    assert message(status, "Running") == scheduler


def test_an_unschedulable_pod_being_deleted_is_ignored():
    pods = [pod(phase="Pending", unschedulable="no nodes", deleting=True)]
    status, _ = observe(make_job(), training_job(), pods)
    assert condition(status, "Running") == ("False", "PodsPending")


# ---------------------------------------------------------------------------------------------
# running, restarting


def test_a_running_pod_makes_the_job_running():
    pods = [pod("demo-0-a"), pod("demo-1-b", phase="Pending")]
    status, _ = observe(make_job(), training_job(completions=2, active=2, start_time="2025-03-04T09:59:00Z"), pods)
    assert status.phase == "Running"
    assert condition(status, "Running") == ("True", "PodsRunning")
    assert message(status, "Running") == "1 of 2 training pod(s) running"
    assert status.start_time == "2025-03-04T09:59:00Z"


def test_the_start_time_is_now_when_the_job_has_none():
    status, _ = observe(make_job(), training_job(), [pod()])
    assert status.start_time == NOW


def test_the_start_time_is_set_once_and_kept():
    first, _ = observe(make_job(), training_job(start_time="2025-03-04T09:59:00Z"), [pod()])
    # After a suspend and resume the Job's startTime moves; the FineTuneJob's stays.
    second, _ = observe(make_job(first), training_job(start_time="2025-03-04T10:30:00Z"), [pod()], now=LATER)
    assert second.start_time == "2025-03-04T09:59:00Z"


def test_a_running_pod_being_deleted_does_not_count_as_running():
    status, _ = observe(make_job(), training_job(), [pod(deleting=True)])
    assert status.phase == "Pending"
    assert condition(status, "Running") == ("False", "PodsPending")


def test_a_job_restarting_after_a_failed_pod_says_why():
    pods = [
        pod("demo-0-old", phase="Failed", exit_code=1, message="CUDA error: an illegal memory access"),
        pod("demo-0-new", phase="Pending"),
    ]
    status, _ = observe(make_job(), training_job(failed=1, active=1), pods)
    assert status.phase == "Pending"
    assert status.restarts == 1
    assert condition(status, "Running") == ("False", "Restarting")
    text = message(status, "Running")
    assert "pod demo-0-old exited with code 1" in text
    assert "unexpected failure (retried)" in text
    assert "CUDA error: an illegal memory access" in text


def test_a_preempted_pod_is_reported_as_a_retry_from_the_checkpoint():
    pods = [pod("demo-0-old", phase="Failed", exit_code=75), pod("demo-0-new", phase="Pending")]
    status, _ = observe(make_job(), training_job(failed=1, active=1), pods)
    assert condition(status, "Running") == ("False", "Restarting")
    assert "preempted after saving a checkpoint" in message(status, "Running")


def test_restarts_are_counted_while_running_again():
    pods = [pod("demo-0-old", phase="Failed", exit_code=75), pod("demo-0-new")]
    status, _ = observe(make_job(), training_job(failed=2, active=1), pods)
    assert status.phase == "Running"
    assert status.restarts == 2


def test_a_pod_failed_by_a_disruption_is_a_restart_though_the_job_does_not_count_it():
    drained = pod("demo-0-old", phase="Failed", exit_code=143)
    drained["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    status, _ = observe(make_job(), training_job(failed=0, active=1), [drained, pod("demo-0-new")])
    assert status.restarts == 1


def test_restarts_never_go_down_when_a_job_is_replaced():
    status, _ = observe(make_job({"restarts": 3}), training_job(failed=0, active=1), [pod()])
    assert status.restarts == 3


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName"])
def test_a_pod_stuck_on_something_the_user_must_fix_says_so(reason):
    stuck = pod(phase="Pending")
    stuck["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": reason, "message": "the details"}}}
    ]
    status, _ = observe(make_job(), training_job(active=1), [stuck])
    assert condition(status, "Running") == ("False", reason)
    assert message(status, "Running") == "pod demo-0-abcde, container trainer: the details"


def test_a_pod_that_is_just_starting_is_pending():
    starting = pod(phase="Pending")
    starting["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
    ]
    status, _ = observe(make_job(), training_job(active=1), [starting])
    assert condition(status, "Running") == ("False", "PodsPending")


def test_the_most_recent_failure_is_the_one_reported():
    pods = [
        pod("demo-0-first", phase="Failed", exit_code=1, finished_at="2025-03-04T09:00:00Z"),
        pod("demo-0-second", phase="Failed", exit_code=137, finished_at="2025-03-04T09:30:00Z"),
        pod("demo-0-third", phase="Failed", exit_code=75, finished_at="2025-03-04T09:10:00Z"),
    ]
    termination = last_termination(pods)
    assert (termination.pod, termination.exit_code) == ("demo-0-second", 137)


def test_successful_and_other_containers_are_not_failures():
    other = pod("demo-0-x", phase="Failed", exit_code=1)
    other["status"]["containerStatuses"][0]["name"] = "sidecar"
    assert last_termination([pod("demo-0-ok", phase="Succeeded", exit_code=0), other]) is None


# ---------------------------------------------------------------------------------------------
# suspended, queued, admitted


def test_a_job_suspended_by_spec():
    status, _ = observe(make_job(suspend=True), training_job(suspend=True))
    assert status.phase == "Suspended"
    assert condition(status, "Suspended") == ("True", "JobSuspended")
    assert "spec.suspend" in message(status, "Suspended")
    assert condition(status, "Running") == ("False", "Suspended")
    assert condition(status, "Succeeded") == ("Unknown", "Training")


def test_a_job_queued_by_kueue_says_which_queue():
    status, _ = observe(make_job(), training_job(suspend=True, labels={QUEUE_LABEL: "gpu-queue"}))
    assert status.phase == "Suspended"
    assert condition(status, "Suspended") == ("True", "QueuedByKueue")
    assert "gpu-queue" in message(status, "Suspended")
    assert condition(status, "Running") == ("False", "Suspended")


def test_spec_suspend_wins_over_the_queue():
    status, _ = observe(make_job(suspend=True), training_job(suspend=True, labels={QUEUE_LABEL: "gpu-queue"}))
    assert condition(status, "Suspended") == ("True", "JobSuspended")


def test_a_suspended_job_neither_spec_nor_kueue_suspended():
    status, _ = observe(make_job(), training_job(suspend=True))
    assert condition(status, "Suspended") == ("True", "JobSuspended")
    assert status.phase == "Suspended"


def test_a_job_admitted_by_kueue_shows_the_admission():
    status, _ = observe(make_job(), training_job(labels={QUEUE_LABEL: "gpu-queue"}), [pod()])
    assert condition(status, "Suspended") == ("False", "Admitted")
    assert "gpu-queue" in message(status, "Suspended")
    assert status.phase == "Running"


def test_resuming_moves_suspended_to_false_with_an_event():
    suspended, _ = observe(make_job(suspend=True), training_job(suspend=True))
    resumed, changes = observe(make_job(suspended), training_job(), [pod()], now=LATER)
    assert condition(resumed, "Suspended") == ("False", "NotSuspended")
    assert ("Suspended", "False", "True") in [
        (c.condition.type, c.condition.status, c.previous_status) for c in changes
    ]
    assert get_condition(resumed.conditions, "Suspended").last_transition_time == LATER


# ---------------------------------------------------------------------------------------------
# complete


def test_a_complete_job_succeeds_with_its_completion_time():
    done = training_job(job_condition("Complete", at="2025-03-04T09:58:00Z"), completion_time="2025-03-04T09:57:00Z")
    status, _ = observe(make_job(), done)
    assert status.phase == "Succeeded"
    assert status.completion_time == "2025-03-04T09:57:00Z"
    assert condition(status, "Succeeded") == ("True", "TrainingSucceeded")
    assert condition(status, "Running") == ("False", "JobFinished")
    assert condition(status, "Failed") == ("False", "TrainingSucceeded")


DIGEST = "sha256:" + "d" * 64
SUMMARY = FinalSummary.model_validate(
    {
        "artifact": {"uri": "pvc://outputs/team-a/demo/v1/", "digest": DIGEST, "sizeBytes": 1234},
        "evaluation": {
            "task": {"baseLoss": 2.0, "adapterLoss": 1.5},
            "general": {"baseLoss": 3.0, "adapterLoss": 3.03},
            "gate": "Passed",
            "message": "g" * 3000,
        },
        "modelRevision": "abc123",
    }
)


def test_the_summary_in_a_succeeded_trainers_termination_message_stands_in_for_the_final_push():
    said = SUMMARY.to_message()
    assert len(said.encode()) < 4096
    done = training_job(job_condition("Complete"))
    status, _ = observe(make_job(), done, [pod(phase="Succeeded", exit_code=0, message=said)])
    assert status.artifact.uri == "pvc://outputs/team-a/demo/v1/" and status.artifact.digest == DIGEST
    assert status.artifact.size_bytes == 1234 and status.model.revision == "abc123"
    assert status.evaluation.task == SUMMARY.evaluation.task and status.evaluation.gate == "Passed"
    assert condition(status, "Evaluated") == ("True", "GatePassed")
    assert message(status, "Evaluated").startswith("task loss 2.0000 -> 1.5000 (-25.0%")


# A pod that carries the job's labels and says what the job would, but is not the training Job's pod.
FORGERIES = {
    "no owner": [],
    "owned, not controlled": [controller("Job", "demo", TRAINING_JOB_UID, is_controller=False)],
    "another job's": [controller("Job", "demo", "uid-of-an-earlier-job")],
}


@pytest.mark.parametrize("owners", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_termination_message_from_a_pod_the_job_does_not_control_is_not_believed(owners):
    done = training_job(job_condition("Complete"))
    forged = pod("demo-0-forged", phase="Succeeded", exit_code=0, message=SUMMARY.to_message(), owner_references=owners)
    status, _ = observe(make_job(), done, [forged, pod(phase="Succeeded", exit_code=0)])
    assert status.artifact is None and status.evaluation is None
    assert get_condition(status.conditions, "Evaluated") is None


def test_the_pods_of_a_job_the_finetunejob_does_not_control_say_nothing():
    foreign = training_job(job_condition("Complete"), owner_uid="uid-of-another-finetunejob")
    genuine = pod(phase="Succeeded", exit_code=0, message=SUMMARY.to_message())
    assert pods_of(foreign, [genuine], JOB_UID) == []
    assert pods_of(training_job(), [genuine], JOB_UID) == [genuine]
    assert pods_of(None, [genuine], JOB_UID) == []
    status, _ = observe(make_job(), foreign, [genuine])
    assert status.artifact is None


def test_a_failure_is_explained_only_by_the_jobs_own_pods():
    failed = training_job(
        job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    )
    forged = pod("demo-0-forged", phase="Failed", exit_code=78, message="forged words", owner_references=[])
    status, _ = observe(make_job(), failed, [forged])
    assert condition(status, "Failed") == ("True", "BackoffLimitExceeded")
    assert "forged words" not in message(status, "Failed")


def test_the_gate_is_judged_again_from_the_numbers_whatever_the_trainer_said():
    worse = SUMMARY.model_copy(deep=True)
    worse.evaluation.task.adapter_loss = 2.5  # the task got worse; the trainer still says Passed
    done = training_job(job_condition("Complete"))
    status, _ = observe(make_job(), done, [pod(phase="Succeeded", exit_code=0, message=worse.to_message())])
    assert status.evaluation.gate == "Failed" and "g" * 10 not in status.evaluation.message
    assert condition(status, "Evaluated") == ("False", "GateFailed")
    assert "task loss 2.0000 -> 2.5000 (+25.0%; needs a decrease of at least 0.0%) FAILED" in message(
        status, "Evaluated"
    )


def test_a_pushed_verdict_without_numbers_is_a_failed_gate_that_says_the_numbers_are_missing():
    pushed = {"evaluation": {"gate": "Passed", "message": "all good"}}
    status, _ = observe(make_job(pushed), training_job(job_condition("Complete")))
    assert status.evaluation.gate == "Failed"
    assert condition(status, "Evaluated") == ("False", "GateFailed")
    assert "task loss not measured" in message(status, "Evaluated")
    assert "all good" not in message(status, "Evaluated")


def test_a_pushed_artifact_wins_over_the_termination_message_and_failures_say_nothing():
    pushed = {"artifact": {"uri": "s3://a/pushed/", "digest": DIGEST, "sizeBytes": 1}}
    done = training_job(job_condition("Complete"))
    status, _ = observe(make_job(pushed), done, [pod(phase="Succeeded", exit_code=0, message=SUMMARY.to_message())])
    assert status.artifact.uri == "s3://a/pushed/"
    failed = pod(phase="Failed", exit_code=1, message=SUMMARY.to_message())
    plain = pod(name="demo-0-plain", phase="Succeeded", exit_code=0, message="done")
    status, _ = observe(make_job(), done, [failed, plain])
    assert status.artifact is None


def test_a_job_that_finished_unseen_takes_its_start_time_from_the_job():
    done = training_job(job_condition("Complete"), start_time="2025-03-04T09:00:00Z")
    status, _ = observe(make_job(), done)
    assert status.start_time == "2025-03-04T09:00:00Z"
    failed = training_job(job_condition("Failed", reason="BackoffLimitExceeded"), start_time="2025-03-04T09:00:00Z")
    assert observe(make_job(), failed)[0].start_time == "2025-03-04T09:00:00Z"


def test_the_completion_time_falls_back_to_the_complete_condition_then_now():
    status, _ = observe(make_job(), training_job(job_condition("Complete", at="2025-03-04T09:58:00Z")))
    assert status.completion_time == "2025-03-04T09:58:00Z"
    bare = training_job({"type": "Complete", "status": "True"})
    status, _ = observe(make_job(), bare)
    assert status.completion_time == NOW


def test_a_complete_condition_that_is_not_true_is_ignored():
    status, _ = observe(make_job(), training_job({"type": "Complete", "status": "False"}), [pod()])
    assert status.phase == "Running"


def test_success_finalises_the_progress_to_one_hundred_percent():
    progress = {"step": 990, "totalSteps": 1000, "percent": 99, "etaSeconds": 30, "eta": "30s", "trainLoss": 1.2}
    status, _ = observe(make_job({"progress": progress}), training_job(job_condition("Complete")))
    assert status.progress.percent == 100
    assert status.progress.step == 1000
    assert status.progress.eta_seconds == 0
    assert status.progress.eta == "0s"
    assert status.progress.train_loss == 1.2


def test_success_without_progress_reports_none():
    status, _ = observe(make_job(), training_job(job_condition("Complete")))
    assert status.progress is None


# ---------------------------------------------------------------------------------------------
# failed


def _failed_by_policy() -> dict[str, Any]:
    return training_job(
        job_condition(
            "Failed",
            "PodFailurePolicy",
            "Container trainer for pod team-a/demo-0-abc failed with exit code 78 matching FailJob rule at index 0",
            at="2025-03-04T09:50:00Z",
        ),
        failed=1,
    )


@pytest.mark.parametrize(
    ("exit_code", "reason", "meaning"),
    [
        (78, "ConfigurationError", "configuration error"),
        (65, "DataError", "data error"),
        (79, "GateFailed", "the evaluation gate failed"),
    ],
)
def test_a_non_retriable_exit_code_fails_the_job_with_its_reason_and_meaning(exit_code, reason, meaning):
    termination = "spec.method.type qlora needs a CUDA GPU; this node has none"
    pods = [pod("demo-0-abc", phase="Failed", exit_code=exit_code, message=termination)]
    status, _ = observe(make_job(), _failed_by_policy(), pods)
    assert status.phase == "Failed"
    assert condition(status, "Failed") == ("True", reason)
    assert condition(status, "Succeeded") == ("False", reason)
    assert condition(status, "Running") == ("False", "JobFinished")
    text = message(status, "Failed")
    assert termination in text
    assert meaning in text
    assert f"exited with code {exit_code}" in text
    assert message(status, "Succeeded") == text


def test_the_completion_time_of_a_failure_is_the_failed_conditions_time():
    pods = [pod("demo-0-abc", phase="Failed", exit_code=78)]
    status, _ = observe(make_job(), _failed_by_policy(), pods)
    assert status.completion_time == "2025-03-04T09:50:00Z"


def test_a_failure_target_counts_as_failed_before_the_pods_are_gone():
    target = training_job(job_condition("FailureTarget", "PodFailurePolicy", "exit code 65"))
    status, _ = observe(make_job(), target, [pod("demo-0-abc", phase="Failed", exit_code=65)])
    assert status.phase == "Failed"
    assert condition(status, "Failed") == ("True", "DataError")


def test_backoff_limit_with_an_unknown_exit_code_keeps_the_jobs_reason():
    failed = training_job(
        job_condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), failed=4
    )
    pods = [pod("demo-0-abc", phase="Failed", exit_code=42, message="Traceback ...")]
    status, _ = observe(make_job(), failed, pods)
    assert condition(status, "Failed") == ("True", "BackoffLimitExceeded")
    text = message(status, "Failed")
    assert "BackoffLimitExceeded" in text
    assert "Job has reached the specified backoff limit" in text
    assert "exited with code 42 (unexpected failure (retried))" in text
    assert "Traceback ..." in text
    assert status.restarts == 4


def test_an_out_of_memory_kill_is_named_in_the_failure():
    failed = training_job(job_condition("Failed", "BackoffLimitExceeded"), failed=4)
    status, _ = observe(make_job(), failed, [pod(phase="Failed", exit_code=137)])
    assert "killed by signal 9 (SIGKILL, often the out-of-memory killer)" in message(status, "Failed")


def test_a_deadline_exceeded_job_fails_with_that_reason():
    failed = training_job(job_condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    status, _ = observe(make_job(), failed, [])
    assert status.phase == "Failed"
    assert condition(status, "Failed") == ("True", "DeadlineExceeded")
    assert "Job was active longer than specified deadline" in message(status, "Failed")


def test_a_failed_job_without_a_reason_is_job_failed():
    status, _ = observe(make_job(), training_job({"type": "Failed", "status": "True"}))
    assert condition(status, "Failed") == ("True", "JobFailed")


def test_a_long_termination_message_is_clipped():
    pods = [pod(phase="Failed", exit_code=65, message="bad row\n" * 1000)]
    status, _ = observe(make_job(), _failed_by_policy(), pods)
    assert len(message(status, "Failed")) == MAX_MESSAGE
    assert message(status, "Failed").endswith("...")


# ---------------------------------------------------------------------------------------------
# terminal status is kept


def test_a_succeeded_job_stays_succeeded_when_its_job_is_gone():
    done, _ = observe(make_job(), training_job(job_condition("Complete"), completion_time=NOW))
    kept, changes = observe(make_job(done), None, [], now=LATER)
    assert kept.phase == "Succeeded"
    assert kept.completion_time == NOW
    assert condition(kept, "Succeeded") == ("True", "TrainingSucceeded")
    assert condition(kept, "Created") == ("True", "JobCreated")
    assert kept.job_name == "demo"
    assert changes == []


def test_a_failed_job_stays_failed_when_its_job_is_gone():
    failed, _ = observe(make_job(), _failed_by_policy(), [pod("demo-0-abc", phase="Failed", exit_code=78)])
    kept, changes = observe(make_job(failed), None, [], now=LATER)
    assert kept.phase == "Failed"
    assert condition(kept, "Failed") == ("True", "ConfigurationError")
    assert kept.conditions == failed.conditions
    assert changes == []


def test_a_finished_job_is_not_restarted_by_a_new_job_object():
    done, _ = observe(make_job(), training_job(job_condition("Complete")))
    kept, _ = observe(make_job(done), training_job(), [pod()], now=LATER)
    assert kept.phase == "Succeeded"
    assert condition(kept, "Running") == ("False", "JobFinished")


# ---------------------------------------------------------------------------------------------
# bookkeeping: generation, transition times, changes


def test_the_observed_generation_is_the_jobs_generation():
    status, _ = observe(make_job(generation=7), training_job(), [pod()])
    assert status.observed_generation == 7
    assert {c.observed_generation for c in status.conditions} == {7}


def test_the_input_status_is_not_modified():
    job = make_job()
    observe(job, training_job(), [pod()])
    assert job.status == FineTuneJobStatus()


def test_the_same_observation_gives_the_same_status():
    job = make_job()
    assert observe(job, training_job(), [pod()]) == observe(job, training_job(), [pod()])


def test_the_first_observation_reports_every_condition_as_a_change():
    status, changes = observe(make_job(), training_job(), [pod()])
    assert sorted(c.condition.type for c in changes) == sorted(c.type for c in status.conditions)
    assert all(c.previous_status is None for c in changes)


def test_an_unchanged_observation_reports_no_changes_and_keeps_transition_times():
    first, _ = observe(make_job(), training_job(), [pod()])
    second, changes = observe(make_job(first), training_job(), [pod()], now=LATER)
    assert changes == []
    assert [c.last_transition_time for c in second.conditions] == [NOW] * len(second.conditions)


def test_a_transition_is_one_change_with_the_previous_status_and_a_new_time():
    pending, _ = observe(make_job(), training_job(), [pod(phase="Pending")])
    running, changes = observe(make_job(pending), training_job(), [pod()], now=LATER)
    assert [(c.condition.type, c.condition.status, c.previous_status) for c in changes] == [
        ("Running", "True", "False")
    ]
    assert get_condition(running.conditions, "Running").last_transition_time == LATER
    assert get_condition(running.conditions, "Created").last_transition_time == NOW


def test_a_new_reason_with_the_same_status_is_a_change_but_keeps_the_transition_time():
    pending, _ = observe(make_job(), training_job(), [pod(phase="Pending")])
    stuck, changes = observe(
        make_job(pending), training_job(), [pod(phase="Pending", unschedulable="no GPUs")], now=LATER
    )
    assert [(c.condition.type, c.condition.reason) for c in changes] == [("Running", "Unschedulable")]
    assert get_condition(stuck.conditions, "Running").last_transition_time == NOW


def test_a_new_message_alone_is_not_a_change():
    one, _ = observe(make_job(), training_job(completions=2), [pod("demo-0-a"), pod("demo-1-b", phase="Pending")])
    two, changes = observe(make_job(one), training_job(completions=2), [pod("demo-0-a"), pod("demo-1-b")], now=LATER)
    assert changes == []
    assert message(two, "Running") == "2 of 2 training pod(s) running"


def test_the_conditions_of_a_full_life_are_one_per_type():
    job = make_job()
    for training, pods in [
        (None, []),
        (training_job(), [pod(phase="Pending")]),
        (training_job(), [pod()]),
        (training_job(job_condition("Complete")), []),
    ]:
        status, _ = observe(job, training, pods)
        job = make_job(status)
    types = [c.type for c in job.status.conditions]
    assert len(types) == len(set(types))
    assert set(types) == {"ReferencesResolved", "Created", "Running", "Succeeded", "Failed", "Suspended"}


# ---------------------------------------------------------------------------------------------
# what is written survives the API server's schema


def _schema_problems(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Paths of ``value`` that the CRD's structural schema would prune or refuse."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": int | float}
    if not isinstance(value, types[schema["type"]]) or (schema["type"] == "integer" and isinstance(value, bool)):
        return [f"{path}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not in {schema['enum']}"]
    problems = []
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                problems += _schema_problems(sub, schema["properties"][key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += _schema_problems(sub, schema["additionalProperties"], f"{path}.{key}")
            else:
                problems.append(f"{path}.{key}: pruned")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _schema_problems(item, schema["items"], f"{path}[{index}]")
    return problems


@pytest.mark.parametrize(
    ("training", "pods", "blockers"),
    [
        (None, [], [Blocker("SecretNotFound", "Secret hf missing")]),
        (training_job(suspend=True, labels={QUEUE_LABEL: "q"}), [], []),
        (training_job(failed=1), [pod("demo-0-a", phase="Failed", exit_code=1), pod("demo-0-b", phase="Pending")], []),
        (training_job(job_condition("Complete"), start_time=NOW, completion_time=LATER), [], []),
        (_failed_by_policy(), [pod(phase="Failed", exit_code=78, message="bad config")], []),
    ],
    ids=["blocked", "queued", "restarting", "succeeded", "failed"],
)
def test_the_status_written_survives_the_crd_schema(training, pods, blockers):
    schema = finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    progress = {"step": 10, "totalSteps": 100, "percent": 10, "trainLoss": 1.5, "eta": "5m", "etaSeconds": 300}
    status, _ = observe(make_job({"progress": progress}), training, pods, blockers=blockers)
    assert _schema_problems(status.to_api(), schema) == []


# ---------------------------------------------------------------------------------------------
# a progress report proves the trainer runs


def reporting(updated_at: str | None) -> dict[str, Any]:
    return {"progress": {"step": 3, "updatedAt": updated_at}} if updated_at else {}


def created_at(p: dict[str, Any], at: str) -> dict[str, Any]:
    p["metadata"]["creationTimestamp"] = at
    return p


def test_a_report_newer_than_the_pod_makes_the_job_running_before_the_pod_is_seen_running():
    status, _ = observe(make_job(reporting(LATER)), training_job(), [created_at(pod(phase="Pending"), NOW)])
    assert status.phase == "Running"
    assert condition(status, "Running") == ("True", "TrainerReporting")
    assert status.start_time is not None


def test_a_report_older_than_the_pod_says_nothing_about_it():
    status, _ = observe(make_job(reporting(NOW)), training_job(), [created_at(pod(phase="Pending"), LATER)])
    assert status.phase == "Pending"
    assert condition(status, "Running") == ("False", "PodsPending")


def test_a_report_without_an_active_pod_does_not_make_the_job_running():
    status, _ = observe(make_job(reporting(LATER)), training_job(), [])
    assert status.phase == "Pending"


@pytest.mark.parametrize(("phase", "moved"), [(None, "Running"), ("Pending", "Running"), ("Running", None)])
def test_a_report_moves_only_a_pending_job_to_running(phase, moved):
    assert phase_on_report(phase) == moved


@pytest.mark.parametrize("phase", ["Suspended", "Succeeded", "Failed"])
def test_a_report_never_moves_a_suspended_or_finished_job(phase):
    assert phase_on_report(phase) is None


# ---------------------------------------------------------------------------------------------
# what the resync and the reference checks may leave be


def with_conditions(*conditions: tuple[str, str, str], generation: int = 1) -> FineTuneJob:
    return make_job(
        {
            "conditions": [
                {
                    "type": type_,
                    "status": value,
                    "reason": reason,
                    "message": "",
                    "lastTransitionTime": NOW,
                    "observedGeneration": 1,
                }
                for type_, value, reason in conditions
            ]
        },
        generation=generation,
    )


def test_a_failed_job_is_settled():
    assert is_settled(with_conditions(("Failed", "True", "JobFailed")).status)


def test_a_succeeded_job_is_settled_once_published_or_refused_by_its_gate():
    succeeded = ("Succeeded", "True", "TrainingSucceeded")
    assert is_settled(with_conditions(succeeded, ("Published", "True", "AdapterPublished")).status)
    assert is_settled(with_conditions(succeeded, ("Published", "False", "GateFailed")).status)


@pytest.mark.parametrize("published", [None, ("Published", "False", "PublishFailed")])
def test_a_succeeded_job_whose_publication_is_open_is_not_settled(published):
    conditions = [("Succeeded", "True", "TrainingSucceeded")] + ([published] if published else [])
    assert not is_settled(with_conditions(*conditions).status)


def test_a_running_job_is_not_settled():
    assert not is_settled(with_conditions(("Running", "True", "PodsRunning")).status)


def test_references_found_for_the_current_generation_are_not_looked_up_again():
    assert references_settled(with_conditions(("ReferencesResolved", "True", "AllFound")))


def test_references_are_looked_up_again_after_a_spec_change_or_while_missing():
    assert not references_settled(with_conditions(("ReferencesResolved", "True", "AllFound"), generation=2))
    assert not references_settled(with_conditions(("ReferencesResolved", "False", "SecretNotFound")))
    assert not references_settled(make_job())


def test_a_finished_job_needs_no_references():
    assert references_settled(with_conditions(("Failed", "True", "JobFailed"), ("ReferencesResolved", "False", "X")))
