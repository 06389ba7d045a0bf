"""The CPU preflight for real: the local node agent runs the preflight pod (the trainer image's code on this
machine's CPU) against MinIO, before any training Job exists."""

from __future__ import annotations

import json
import time

import pytest
from kubehelpers import apply, condition, get, unless_failed, wait_for
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


def test_a_finished_jobs_measured_throughput_is_the_next_identical_jobs_estimate(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    planning_operator,
):
    """The first job trains for real and records its tokens/s in the throughput table; the second,
    identical job is estimated from that figure. Asserted: the mechanism (the second estimate's source and
    tokens/s). Reported, not asserted (timing is this machine's): each job's estimated vs actual seconds."""
    from finetune_operator.naming import THROUGHPUT_CONFIG_MAP

    def train(name: str) -> dict:
        manifest = quickstart(namespace, stores, maxSteps=12)
        manifest["metadata"]["name"] = name
        manifest["spec"]["adapter"]["name"] = name
        apply(cluster, manifest)

        def measured():
            plan = (unless_failed(cluster, namespace, name).get("status") or {}).get("plan") or {}
            return plan if plan.get("actualSeconds") else None

        return wait_for(f"{name} to train and record its throughput", measured, timeout=600, interval=1.0)

    first = train("first")
    table = wait_for(
        "the throughput table", lambda: get(cluster, "configmap", namespace, THROUGHPUT_CONFIG_MAP), timeout=30
    )
    (row,) = [json.loads(v) for k, v in table["data"].items() if k == first["estimate"]["key"]]
    second = train("second")

    estimate = second["estimate"]
    assert first["estimate"]["source"] == "default"
    assert estimate["source"] == "measured" and estimate["samples"] == 1, estimate
    assert estimate["key"] == first["estimate"]["key"]
    assert estimate["tokensPerSecond"] == pytest.approx(row[0], rel=1e-3)  # one process: the job's rate
    assert row[0] == pytest.approx(first["trainedTokens"] / first["actualSeconds"], rel=1e-2)
    for name, plan in (("first", first), ("second", second)):
        error = (plan["estimate"]["seconds"] - plan["actualSeconds"]) / plan["actualSeconds"]
        print(
            f"{name}: estimated {plan['estimate']['seconds']}s ({plan['estimate']['source']}, "
            f"{plan['estimate']['tokensPerSecond']} tokens/s), actual {plan['actualSeconds']}s, error {error:+.0%}"
        )


def test_a_spec_change_after_the_preflight_replaces_its_job_and_its_plan_before_any_training(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    planning_operator,
):
    """A dry run is planned for 12 steps, then unsuspended with maxSteps 20 in the same change: the training
    Job waits for a new preflight Job (of the new spec), and the plan it starts on says 20 steps."""
    manifest = quickstart(namespace, stores, maxSteps=12)
    manifest["metadata"]["name"] = "replanned"
    manifest["spec"]["suspend"] = True
    apply(cluster, manifest)

    def plan_of(steps: int):
        plan = ((get(cluster, "ftj", namespace, "replanned") or {}).get("status") or {}).get("plan") or {}
        return plan if plan.get("steps") == steps and plan.get("estimate") else None

    wait_for("the plan of 12 steps", lambda: plan_of(12), timeout=300, interval=1.0)
    first = get(cluster, "job", namespace, "replanned-preflight")["metadata"]["uid"]

    manifest["spec"]["suspend"] = False
    manifest["spec"]["training"]["maxSteps"] = 20
    apply(cluster, manifest)

    def training_job_and_what_it_started_on():
        if get(cluster, "job", namespace, "replanned") is None:
            return None
        preflight = get(cluster, "job", namespace, "replanned-preflight") or {}
        return preflight.get("metadata", {}).get("uid"), plan_of(20)

    preflight_uid, plan = wait_for("the training Job", training_job_and_what_it_started_on, timeout=300, interval=0.5)
    assert preflight_uid not in (None, first)
    assert plan is not None and plan["trainedTokens"] > 0, plan
    config = get(cluster, "configmap", namespace, "replanned-config")
    assert json.loads(config["data"]["config.json"])["training"]["maxSteps"] == 20


def test_training_loads_the_revision_the_preflight_resolved_even_after_the_branch_moved(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    base_model,  # noqa: F811 - the fixture imported above
    planning_operator,
):
    """An hf:// model at branch main, from a Hub mirror: the dry run pins main's commit; main then moves to
    another commit; unsuspended, the job trains on the pinned commit and publishes an adapter that names it."""
    from trainer.hub_mirror import HubMirror

    planned, moved = "1" * 40, "2" * 40
    with HubMirror("org/tiny", base_model, planned) as mirror:
        manifest = quickstart(namespace, stores, maxSteps=3)
        manifest["metadata"]["name"] = "pinned"
        manifest["spec"]["adapter"]["name"] = "pinned"
        manifest["spec"]["model"] = {"uri": "hf://org/tiny", "revision": "main"}
        template = manifest["spec"].setdefault("template", {})
        template["env"] = [*template.get("env", []), {"name": "HF_ENDPOINT", "value": mirror.url}]
        manifest["spec"]["suspend"] = True
        apply(cluster, manifest)

        def status():
            return (get(cluster, "ftj", namespace, "pinned") or {}).get("status") or {}

        found = wait_for("the plan", lambda: status() if status().get("plan") else None, timeout=300, interval=1.0)
        assert found["plan"]["modelRevision"] == planned and found["model"]["revision"] == planned

        mirror.move("main", moved)
        manifest["spec"]["suspend"] = False
        apply(cluster, manifest)

        def published():
            found = condition(unless_failed(cluster, namespace, "pinned"), "Published")
            return found if found and found["status"] == "True" else None

        wait_for("the job to train and publish", published, timeout=600, interval=1.0)
        weights = [r for r in mirror.requests if r.startswith("GET") and r.endswith("/model.safetensors")]

    config = json.loads(get(cluster, "configmap", namespace, "pinned-config")["data"]["config.json"])
    assert config["model"]["revision"] == planned
    assert weights and all(f"/resolve/{planned}/" in r for r in weights), weights
    adapter = get(cluster, "ftadapter", namespace, "pinned")
    assert adapter["spec"]["baseModel"]["revision"] == planned
    assert status()["model"]["revision"] == planned
