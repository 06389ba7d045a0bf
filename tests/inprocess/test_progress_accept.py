"""The progress service in-process: a report from the job's rank 0, authenticated with a real projected token
(TokenReview by the API server) and the watch-fed caches, becomes the FineTuneJob's status; a checkpoint
fallback becomes a Warning Event. The HTTP layer around it (codes, budgets, TLS) is the e2e tier's."""

from __future__ import annotations

import pytest
from finetune_operator.kube import PODS
from finetune_operator.progress.identity import Refusal
from operator_harness import training_job

REPORT = {
    "step": 120,
    "totalSteps": 400,
    "epoch": 0.3,
    "trainLoss": 1.2345,
    "learningRate": 8e-5,
    "tokensPerSecond": 11234.5,
    "etaSeconds": 3725,
}


def started(harness, name: str, nodes: int = 1, phase: str = "Running") -> list[dict]:
    manifest = training_job(name, harness.namespace)
    manifest["spec"]["resources"] = {"gpusPerNode": 1, "nodes": nodes}
    harness.create(manifest)
    harness.reconcile(name)
    return harness.start_pods(name, phase)


def test_a_report_is_the_status_and_moves_a_pending_job_to_running_in_the_same_write(harness):
    # The pod is still Pending for the operator: a report proves the trainer runs all the same.
    (pod,) = started(harness, "live", phase="Pending")
    assert harness.reconcile("live").phase == "Pending"
    service = harness.progress_service()
    token = harness.token_for(pod)

    harness.report(service, "live", token, REPORT)

    assert harness.sent() == [("create", "tokenreviews", "201"), ("patch", "finetunejobs/status", "200")]
    status = harness.ftj("live")["status"]
    assert status["phase"] == "Running"
    assert status["progress"]["step"] == 120 and status["progress"]["percent"] == 30
    row = harness.cluster.run_kubectl("get", "ftj", "live", "-n", harness.namespace, "--no-headers").stdout.split()
    assert row[1:5] == ["Running", "30", "1.2345", "1h2m"]

    checkpoint = {"step": 200, "totalSteps": 400, "checkpoint": {"step": 200, "uri": "s3://adapters/ckpt/step-200/"}}
    harness.report(service, "live", token, checkpoint)

    status = harness.ftj("live")["status"]
    assert status["checkpoint"]["step"] == 200 and status["progress"]["percent"] == 50
    assert status["progress"]["trainLoss"] == 1.2345, "fields a report leaves out keep their last value"
    assert harness.sent() == [("patch", "finetunejobs/status", "200")], "the pod and jobs come from the caches"
    assert harness.reconcile("live").phase == "Running"


def test_only_rank_zero_may_report(harness):
    _, rank1 = started(harness, "ranks", nodes=2)

    with pytest.raises(Refusal) as refused:
        harness.report(harness.progress_service(), "ranks", harness.token_for(rank1), REPORT)

    assert (refused.value.status, refused.value.reason) == (403, "not_rank_zero")
    assert "progress" not in harness.ftj("ranks")["status"]


def test_a_deleted_pods_token_may_not_report(harness):
    (pod,) = started(harness, "gone")
    token = harness.token_for(pod)
    harness.admin.delete(PODS, harness.namespace, pod["metadata"]["name"])

    with pytest.raises(Refusal) as refused:
        harness.report(harness.progress_service(), "gone", token, REPORT)

    assert (refused.value.status, refused.value.reason) in ((401, "invalid_token"), (403, "pod_gone"))


def test_another_jobs_pod_may_not_report_for_this_one(harness):
    started(harness, "mine")
    (other,) = started(harness, "other")

    with pytest.raises(Refusal) as refused:
        harness.report(harness.progress_service(), "mine", harness.token_for(other), REPORT)

    assert (refused.value.status, refused.value.reason) == (403, "wrong_job")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"step": %d}' % 2**80, "step: "),
        (b'{"step": 3, "checkpoint": {"step": %d, "uri": "s3://b/c/"}}' % 2**63, "checkpoint.step: "),
        (b'{"step": 3, "evaluation": {"task": {"baseLoss": Infinity}}}', "evaluation.task.baseLoss: "),
        (b'{"step": 3, "evaluation": {"general": {"adapterLoss": NaN}}}', "evaluation.general.adapterLoss: "),
    ],
    ids=["step", "checkpoint-step", "infinity", "nan"],
)
def test_a_report_beyond_what_a_status_can_hold_is_refused_naming_the_field(harness, body, field):
    """Accepted, such a report would fail at the API server: a 503 the trainer retries for ever."""
    (pod,) = started(harness, "huge")

    with pytest.raises(Refusal) as refused:
        harness.report(harness.progress_service(), "huge", harness.token_for(pod), body)

    assert (refused.value.status, refused.value.reason) == (400, "invalid_body")
    assert refused.value.message.startswith(field), refused.value.message
    assert "progress" not in harness.ftj("huge")["status"]


def fallback_events(harness, name: str) -> list[dict]:
    return [event for event in harness.events(name) if event["reason"] == "CheckpointDamaged"]


def test_a_report_of_a_damaged_checkpoint_becomes_a_warning_event(harness):
    (pod,) = started(harness, "fell-back")
    service, token = harness.progress_service(), harness.token_for(pod)
    harness.report(service, "fell-back", token, {"step": 300, "resumedFromStep": 300})
    assert fallback_events(harness, "fell-back") == [], "a report without a fallback made an Event"

    report = {
        "stage": "starting",
        "step": 200,
        "resumedFromStep": 200,
        "checkpointFallback": {"fromStep": 300, "toStep": 200, "reason": "digest_mismatch"},
    }
    harness.report(service, "fell-back", token, report)

    (event,) = fallback_events(harness, "fell-back")
    assert event["type"] == "Warning"
    assert event["message"] == "checkpoint step-300 failed its check (digest_mismatch); resumed from step 200"
    assert event["involvedObject"]["uid"] == harness.ftj("fell-back")["metadata"]["uid"]
    assert harness.ftj("fell-back")["status"]["resumedFromStep"] == 200

    started_over = {"stage": "starting", "step": 0, "checkpointFallback": {"fromStep": 200, "reason": "unreadable"}}
    harness.report(service, "fell-back", token, started_over)
    assert "resumedFromStep" not in harness.ftj("fell-back")["status"]
    assert len(fallback_events(harness, "fell-back")) == 2
