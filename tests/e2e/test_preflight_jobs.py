"""The CPU preflight for real: the local node agent runs the preflight pod (the trainer image's code on this
machine's CPU) against MinIO, before any training Job exists."""

from __future__ import annotations

import time

import pytest
from kubehelpers import apply, condition, get, wait_for
from test_real_training import DATA, base_model, quickstart, stores  # noqa: F401 - fixtures

from hack.localcluster import free_port

pytestmark = [pytest.mark.s3, pytest.mark.trainer]


@pytest.fixture
def planning_operator(start_operator, namespace):
    port = free_port()
    return start_operator(
        "--preflight=true",
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--operator-namespace={namespace}",
    )


def test_a_bad_row_fails_the_job_in_preflight_naming_file_and_line_and_no_training_job_ever_exists(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    planning_operator,
):
    rows = (DATA / "train.jsonl").read_text().splitlines()
    broken = [*rows[:4], '{"messages": "not a list"}', *rows[4:8], "{not json"]
    minio.client().put_object(
        Bucket=stores["datasets"], Key="broken/train.jsonl", Body=("\n".join(broken) + "\n").encode()
    )
    manifest = quickstart(namespace, stores, maxSteps=5)
    manifest["metadata"]["name"] = "broken"
    manifest["spec"]["data"]["train"] = [{"uri": f"s3://{stores['datasets']}/broken/train.jsonl"}]
    manifest["spec"]["data"]["maxInvalidFraction"] = 0.05
    apply(cluster, manifest)

    training_jobs_seen = []

    def failed():
        training_jobs_seen.append(get(cluster, "job", namespace, "broken") is not None)
        found = condition(get(cluster, "ftj", namespace, "broken"), "Failed")
        return found if found and found["status"] == "True" else None

    failure = wait_for("the preflight to fail the job", failed, timeout=300, interval=1.0)
    assert failure["reason"] == "DataError", failure
    uri = f"s3://{stores['datasets']}/broken/train.jsonl"
    assert f"{uri}:5" in failure["message"] and f"{uri}:10" in failure["message"]
    time.sleep(3)  # a reconcile after the failure creates nothing either
    assert get(cluster, "job", namespace, "broken") is None and not any(training_jobs_seen)
    assert get(cluster, "job", namespace, "broken-preflight") is not None


def test_a_suspended_job_gets_its_plan_and_estimate_and_no_training(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    planning_operator,
):
    manifest = quickstart(namespace, stores, maxSteps=12)
    manifest["metadata"]["name"] = "dry-run"
    manifest["spec"]["suspend"] = True
    apply(cluster, manifest)

    def planned():
        status = (get(cluster, "ftj", namespace, "dry-run") or {}).get("status") or {}
        return status if (status.get("plan") or {}).get("estimate") else None

    started = time.monotonic()
    status = wait_for("the plan of the suspended job", planned, timeout=300, interval=1.0)
    print(f"preflight to plan: {time.monotonic() - started:.1f}s", status["plan"])
    plan = status["plan"]
    assert plan["steps"] == 12 and plan["tokens"]["train"] > 0 and plan["examples"]["train"] > 0
    assert plan["trainedTokens"] > 0 and plan["parameters"] > 0
    assert plan["estimate"]["seconds"] >= 0 and plan["estimate"]["source"] == "default"
    assert plan["estimate"]["key"].startswith("cpu.")
    assert status["phase"] == "Suspended" and condition({"status": status}, "Suspended")["reason"] == "DryRun"
    assert get(cluster, "job", namespace, "dry-run") is None
