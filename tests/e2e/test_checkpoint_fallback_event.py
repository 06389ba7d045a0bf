"""A trainer that fell back from a damaged checkpoint says so in a report; the operator records a Warning Event
on the FineTuneJob, and the status names the step the run really resumed from."""

from __future__ import annotations

from kubehelpers import get, items, wait_for
from test_progress import endpoint, running_job, token_for  # noqa: F401 (endpoint is a fixture used by name)


def fallback_events(cluster, namespace: str, name: str) -> list[dict]:
    return [
        event
        for event in items(cluster, "events", namespace)
        if event["reason"] == "CheckpointDamaged" and event["involvedObject"]["name"] == name
    ]


def test_a_report_of_a_damaged_checkpoint_becomes_a_warning_event(cluster, namespace, endpoint, api_client):  # noqa: F811
    (pod,) = running_job(cluster, namespace, "fell-back")
    token = token_for(api_client, namespace, pod)
    assert endpoint.post(namespace, "fell-back", {"step": 300, "resumedFromStep": 300}, token)[0] == 204
    assert fallback_events(cluster, namespace, "fell-back") == [], "a report without a fallback made an Event"

    report = {
        "stage": "starting",
        "step": 200,
        "resumedFromStep": 200,
        "checkpointFallback": {"fromStep": 300, "toStep": 200, "reason": "digest_mismatch"},
    }
    assert endpoint.post(namespace, "fell-back", report, token)[0] == 204

    (event,) = wait_for("the CheckpointDamaged event", lambda: fallback_events(cluster, namespace, "fell-back"))
    assert event["type"] == "Warning"
    assert event["message"] == "checkpoint step-300 failed its check (digest_mismatch); resumed from step 200"
    assert event["involvedObject"]["uid"] == get(cluster, "ftj", namespace, "fell-back")["metadata"]["uid"]
    assert get(cluster, "ftj", namespace, "fell-back")["status"]["resumedFromStep"] == 200

    started_over = {"stage": "starting", "step": 0, "checkpointFallback": {"fromStep": 200, "reason": "unreadable"}}
    assert endpoint.post(namespace, "fell-back", started_over, token)[0] == 204
    assert "resumedFromStep" not in get(cluster, "ftj", namespace, "fell-back")["status"]
    wait_for("a second event", lambda: len(fallback_events(cluster, namespace, "fell-back")) == 2)
