"""A job's events and checkpoints, from its status."""

from __future__ import annotations

from finetune_operator.openai_api.events import job_checkpoints, job_events


def finetunejob(**status) -> dict:
    return {
        "metadata": {"name": "ftjob-1", "namespace": "a", "creationTimestamp": "2027-01-15T08:00:00Z"},
        "spec": {},
        "status": status,
    }


def condition(type_, status, reason, at, message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def test_events_follow_the_job_newest_first_with_step_metrics_and_the_outcome():
    job = finetunejob(
        phase="Failed",
        conditions=[
            condition("Running", "True", "PodsRunning", "2027-01-15T08:01:00Z"),
            condition("Failed", "True", "DataError", "2027-01-15T08:09:00Z", "train.jsonl:3: bad row"),
        ],
        progress={
            "step": 20,
            "totalSteps": 40,
            "trainLoss": 1.25,
            "evalLoss": 1.5,
            "updatedAt": "2027-01-15T08:05:00Z",
        },
        checkpoint={"step": 20, "uri": "s3://x", "savedAt": "2027-01-15T08:06:00Z"},
    )
    events = job_events(job)
    assert [e["message"].split(":")[0] for e in events] == [
        "Fine-tuning job failed (DataError)",
        "Checkpoint saved at step 20",
        "Step 20/40, training loss 1.2500",
        "Fine-tuning job started",
        "Created fine-tuning job",
    ]
    assert events[0]["level"] == "error"
    metrics = events[2]
    assert metrics["type"] == "metrics"
    assert metrics["data"] == {"step": 20, "total_steps": 40, "train_loss": 1.25, "valid_loss": 1.5}
    assert all(e["object"] == "fine_tuning.job.event" for e in events)


def test_an_event_keeps_its_id_between_calls_so_pages_follow_each_other():
    job = finetunejob(conditions=[condition("Running", "True", "PodsRunning", "2027-01-15T08:01:00Z")])
    assert [e["id"] for e in job_events(job)] == [e["id"] for e in job_events(job)]
    assert len({e["id"] for e in job_events(job)}) == 2


def test_a_paused_job_says_so_and_a_kueue_queued_one_says_queued():
    paused = finetunejob(conditions=[condition("Suspended", "True", "JobSuspended", "2027-01-15T08:01:00Z")])
    queued = finetunejob(conditions=[condition("Suspended", "True", "QueuedByKueue", "2027-01-15T08:01:00Z")])
    assert job_events(paused)[0]["message"] == "Fine-tuning job paused"
    assert job_events(queued)[0]["message"] == "Fine-tuning job queued"


def test_the_gate_verdict_is_an_event():
    job = finetunejob(conditions=[condition("Evaluated", "True", "GateWarned", "2027-01-15T09:00:00Z", "task -12%")])
    assert job_events(job)[0]["level"] == "warn"
    assert "task -12%" in job_events(job)[0]["message"]


def test_the_newest_checkpoint_carries_the_losses_of_its_step():
    job = finetunejob(
        progress={"step": 30, "trainLoss": 0.9, "evalLoss": 1.1, "updatedAt": "2027-01-15T08:05:00Z"},
        checkpoint={"step": 30, "uri": "s3://x", "savedAt": "2027-01-15T08:06:00Z"},
        evaluation={"task": {"adapterLoss": 1.05}},
    )
    [checkpoint] = job_checkpoints(job)
    assert checkpoint["step_number"] == 30
    assert checkpoint["fine_tuning_job_id"] == "ftjob-1"
    assert checkpoint["metrics"] == {"step": 30.0, "train_loss": 0.9, "valid_loss": 1.1, "full_valid_loss": 1.05}


def test_a_checkpoint_behind_the_latest_step_has_no_losses_that_are_not_its_own():
    job = finetunejob(
        progress={"step": 35, "trainLoss": 0.8, "updatedAt": "2027-01-15T08:07:00Z"},
        checkpoint={"step": 30, "uri": "s3://x", "savedAt": "2027-01-15T08:06:00Z"},
    )
    assert job_checkpoints(job)[0]["metrics"] == {"step": 30.0}


def test_no_checkpoint_no_checkpoints():
    assert job_checkpoints(finetunejob()) == []
