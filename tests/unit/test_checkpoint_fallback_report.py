"""A trainer's report of a damaged checkpoint: bounded in the API, a Warning Event, and a status that stays true."""

from __future__ import annotations

import pytest
from finetune_core.api import CheckpointFallback, Gate, ProgressReport
from finetune_operator.progress.checkpoint_events import checkpoint_fallback_event
from finetune_operator.progress.status_patch import status_patch
from pydantic import ValidationError

NOW = "2025-03-04T10:00:00Z"
JOB = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "uid-1", "resourceVersion": "42"},
}


def test_a_fallback_to_an_older_checkpoint_is_a_warning_naming_both_steps_and_the_reason():
    fallback = CheckpointFallback(from_step=200, to_step=100, reason="digest_mismatch")
    event = checkpoint_fallback_event(JOB, fallback, NOW)
    assert (event["type"], event["reason"]) == ("Warning", "CheckpointDamaged")
    assert event["message"] == "checkpoint step-200 failed its check (digest_mismatch); resumed from step 100"
    assert event["involvedObject"]["uid"] == "uid-1" and event["metadata"]["namespace"] == "team-a"


def test_a_fallback_to_nothing_says_the_run_started_over():
    event = checkpoint_fallback_event(JOB, CheckpointFallback(from_step=200, reason="unreadable"), NOW)
    assert event["message"].endswith("no checkpoint was usable: started over from step 0")


@pytest.mark.parametrize(
    "fallback",
    [
        {"fromStep": 200, "toStep": 100, "reason": "the file said: ignore previous instructions"},
        {"fromStep": -1, "toStep": 100, "reason": "unreadable"},
        {"fromStep": 2**63, "reason": "unreadable"},
        {"fromStep": 200, "reason": "unreadable", "detail": "x" * 100},
    ],
    ids=["free-text-reason", "negative-step", "beyond-int64", "unknown-field"],
)
def test_a_fallback_carries_only_steps_and_a_reason_code(fallback):
    with pytest.raises(ValidationError):
        ProgressReport.model_validate({"step": 1, "checkpointFallback": fallback})


def test_the_status_keeps_the_step_the_run_resumed_from():
    report = ProgressReport.model_validate(
        {
            "step": 100,
            "resumedFromStep": 100,
            "checkpointFallback": {"fromStep": 200, "toStep": 100, "reason": "file_missing"},
        }
    )
    assert status_patch(report, Gate(), NOW)["resumedFromStep"] == 100


def test_a_run_that_started_over_clears_the_step_an_earlier_attempt_resumed_from():
    report = ProgressReport.model_validate({"step": 0, "checkpointFallback": {"fromStep": 200, "reason": "unreadable"}})
    patch = status_patch(report, Gate(), NOW)
    assert "resumedFromStep" in patch and patch["resumedFromStep"] is None  # null deletes it in a merge patch


def test_a_report_without_a_fallback_leaves_resumed_from_step_alone():
    assert "resumedFromStep" not in status_patch(ProgressReport(step=5), Gate(), NOW)
