"""Kubernetes Events for condition transitions: Warning for bad news, Normal otherwise."""

from __future__ import annotations

import pytest
from finetune_core.api import Condition
from finetune_operator.events import event_for, event_type, worth_an_event
from finetune_operator.status.conditions import Change

NOW = "2025-03-04T10:00:00Z"
OBJECT = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "uid-1", "resourceVersion": "42"},
}


def change(type_: str, status: str, reason: str = "Reason", message: str = "details", previous: str | None = None):
    condition = Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=NOW)
    return Change(condition, previous)


@pytest.mark.parametrize(
    ("type_", "status", "reason", "expected"),
    [
        ("Failed", "True", "ConfigurationError", "Warning"),
        ("Failed", "False", "NoFailure", "Normal"),
        ("Succeeded", "True", "TrainingSucceeded", "Normal"),
        ("Succeeded", "False", "DataError", "Normal"),
        ("Running", "True", "PodsRunning", "Normal"),
        ("Running", "False", "Unschedulable", "Normal"),
        ("Suspended", "True", "QueuedByKueue", "Normal"),
        ("ReferencesResolved", "False", "SecretNotFound", "Warning"),
        ("ReferencesResolved", "True", "AllFound", "Normal"),
        ("Evaluated", "False", "GateFailed", "Warning"),
        ("Published", "False", "GateRefused", "Warning"),
        ("ArtifactVerified", "False", "DigestMismatch", "Warning"),
        ("ServingCompatible", "False", "RankTooHigh", "Warning"),
        ("Created", "False", "Creating", "Normal"),
        ("Created", "False", "SecretNotFound", "Warning"),
        ("Created", "True", "JobCreated", "Normal"),
    ],
)
def test_event_type(type_, status, reason, expected):
    assert event_type(change(type_, status, reason)) == expected


def test_the_event_is_about_the_object_and_says_the_transition():
    event = event_for(OBJECT, change("Failed", "True", "DataError", "too many invalid rows"), NOW)
    assert event["involvedObject"] == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "demo",
        "namespace": "team-a",
        "uid": "uid-1",
        "resourceVersion": "42",
    }
    assert event["metadata"]["namespace"] == "team-a"
    assert event["reason"] == "DataError"
    assert event["message"] == "Failed=True: too many invalid rows"
    assert event["type"] == "Warning"
    assert event["firstTimestamp"] == event["lastTimestamp"] == NOW
    assert event["count"] == 1
    assert event["source"] == {"component": "finetune-operator"}
    assert event["reportingComponent"] == "finetune-operator"


def test_the_event_name_is_the_objects_name_and_a_digest():
    name = event_for(OBJECT, change("Running", "True"), NOW)["metadata"]["name"]
    prefix, _, digest = name.partition(".")
    assert prefix == "demo"
    assert len(digest) == 12
    int(digest, 16)


def test_the_same_transition_at_the_same_time_has_the_same_name():
    first = event_for(OBJECT, change("Running", "True"), NOW)
    second = event_for(OBJECT, change("Running", "True"), NOW)
    assert first == second


def test_different_transitions_or_times_have_different_names():
    names = {
        event_for(OBJECT, change("Running", "True"), NOW)["metadata"]["name"],
        event_for(OBJECT, change("Running", "False"), NOW)["metadata"]["name"],
        event_for(OBJECT, change("Running", "True", reason="Other"), NOW)["metadata"]["name"],
        event_for(OBJECT, change("Succeeded", "True"), NOW)["metadata"]["name"],
        event_for(OBJECT, change("Running", "True"), "2025-03-04T10:00:01Z")["metadata"]["name"],
    }
    assert len(names) == 5


def test_a_long_message_is_clipped_to_1024_characters():
    event = event_for(OBJECT, change("Failed", "True", message="x" * 5000), NOW)
    assert len(event["message"]) == 1024


@pytest.mark.parametrize(
    ("type_", "status", "reason"),
    [
        ("Running", "False", "PodsPending"),
        ("Running", "False", "NotStarted"),
        ("Succeeded", "Unknown", "Training"),
        ("Succeeded", "Unknown", "Pending"),
        ("Failed", "False", "NoFailure"),
        ("Suspended", "False", "NotSuspended"),
        ("Created", "False", "Creating"),
    ],
)
def test_a_first_value_that_says_nothing_happened_yet_is_no_event(type_, status, reason):
    assert not worth_an_event(change(type_, status, reason))


@pytest.mark.parametrize(
    ("type_", "status", "reason", "previous"),
    [
        ("Running", "False", "PodsPending", "True"),  # back to pending after running: a transition
        ("Succeeded", "Unknown", "Training", "Unknown"),  # Pending -> Training: a new reason
        ("Running", "False", "Unschedulable", None),  # a first value with news in it
        ("Created", "False", "SecretNotFound", None),
        ("Created", "True", "JobCreated", None),
        ("ReferencesResolved", "True", "AllFound", None),
        ("Suspended", "True", "JobSuspended", None),
    ],
)
def test_every_transition_and_every_first_value_with_news_is_an_event(type_, status, reason, previous):
    assert worth_an_event(change(type_, status, reason, previous=previous))
