"""reconcile() with the CPU preflight on: the training Job waits for the preflight Job's plan; bad data fails the
job naming file:line, and a suspended job is a dry run. The preflight pod's report is written here as the
trainer writes it (the trainer's own preflight is tests/trainer's, both together the e2e tier's)."""

from __future__ import annotations

import json

import pytest
from finetune_core.api import FinalSummary, PreflightReport
from finetune_operator.controller import job_metrics_recorder
from finetune_operator.kube import CONFIGMAPS, FINETUNEJOBS, JOBS, PVCS
from finetune_operator.naming import SHARED_CACHE_ANNOTATION, THROUGHPUT_CONFIG_MAP
from finetune_operator.render.shared_cache import CACHE_CLAIM, render_cache_claim
from operator_harness import condition, training_job

DATA = "s3://datasets/train.jsonl"


def preflight_job(harness, name: str, **settings) -> str:
    harness.configure(preflight=True, **settings)
    manifest = training_job(name, harness.namespace)
    manifest["spec"]["resources"] = {"gpusPerNode": 1}
    harness.create(manifest)
    harness.reconcile(name)
    return f"{name}-preflight"


def test_a_job_waits_for_its_preflight_and_no_training_job_exists_meanwhile(harness):
    preflight = preflight_job(harness, "careful")

    assert harness.get(JOBS, preflight) is not None
    assert harness.get(JOBS, "careful") is None
    events = len(harness.events("careful"))
    again = harness.reconcile("careful")
    assert again.phase == "Pending"
    assert harness.sent("create") == [], "the preflight Job is created once, and a wait is no news"
    assert again.changes == () and len(harness.events("careful")) == events, [c.condition for c in again.changes]


def test_a_bad_row_fails_the_job_in_preflight_naming_file_and_line_and_no_training_job_ever_exists(harness):
    preflight = preflight_job(harness, "broken")
    (pod,) = harness.start_pods(preflight)
    report = PreflightReport(outcome="DataError", origins=[f"{DATA}:5", f"{DATA}:10", "s3://elsewhere/x.jsonl:1"])
    harness.finish_pod(pod["metadata"]["name"], 65, report.to_message())
    harness.fail_job(preflight)

    assert harness.reconcile("broken").phase == "Failed"

    failure = condition(harness.ftj("broken"), "Failed")
    assert failure["reason"] == "DataError", failure
    assert f"{DATA}:5" in failure["message"] and f"{DATA}:10" in failure["message"]
    assert "elsewhere" not in failure["message"], "only rows of the job's own data are named"
    harness.reconcile("broken")
    assert harness.get(JOBS, "broken") is None, "a reconcile after the failure creates nothing either"


def planned(harness, preflight: str, **extra) -> None:
    (pod,) = harness.start_pods(preflight)
    plan = {"parameters": 7_000_000, "totalSteps": 12, "trainedTokens": 48_000, "examples": {"train": 80}, **extra}
    report = PreflightReport.model_validate({"outcome": "Planned", "plan": plan})
    harness.finish_pod(pod["metadata"]["name"], 0, report.to_message())
    harness.complete_job(preflight)


def test_a_planned_job_gets_its_estimate_and_then_its_training_job(harness):
    planned(harness, preflight_job(harness, "planned"))

    harness.reconcile("planned")

    plan = harness.ftj("planned")["status"]["plan"]
    assert plan["steps"] == 12 and plan["trainedTokens"] == 48_000 and plan["parameters"] == 7_000_000
    assert plan["estimate"]["source"] == "default" and plan["estimate"]["seconds"] > 0
    assert harness.get(JOBS, "planned") is not None


def test_a_suspended_job_is_a_dry_run_planned_and_never_trained(harness):
    preflight = preflight_job(harness, "dry-run")
    harness.patch(FINETUNEJOBS, "dry-run", {"spec": {"suspend": True}})
    planned(harness, preflight)

    assert harness.reconcile("dry-run").phase == "Suspended"

    ftj = harness.ftj("dry-run")
    assert ftj["status"]["plan"]["estimate"]["key"].startswith("gpu.")
    assert condition(ftj, "Suspended")["reason"] == "DryRun"
    assert harness.get(JOBS, "dry-run") is None


def trained(harness, name: str, train_seconds: float) -> dict:
    """A planned job that trains and succeeds, its trainer saying how long its optimizer steps took."""
    planned(harness, preflight_job(harness, name, operator_namespace=harness.namespace, leader_election=False))
    harness.reconcile(name)
    (pod,) = harness.start_pods(name)
    artifact = {"uri": f"s3://adapters/{name}/v1/", "digest": "sha256:" + "a" * 64, "sizeBytes": 1}
    summary = FinalSummary.model_validate({"artifact": artifact, "trainSeconds": train_seconds})
    harness.finish_pod(pod["metadata"]["name"], 0, summary.to_message())
    harness.complete_job(name)
    assert harness.reconcile(name).phase == "Succeeded"
    return harness.ftj(name)["status"]["plan"]


def test_a_finished_jobs_measured_throughput_is_the_next_identical_jobs_estimate(harness):
    first = trained(harness, "first", train_seconds=40.0)

    assert first["estimate"]["source"] == "default" and first["actualSeconds"] == 40.0
    table = harness.get(CONFIGMAPS, THROUGHPUT_CONFIG_MAP)
    assert json.loads(table["data"][first["estimate"]["key"]]) == [48_000 / 40.0]

    second = trained(harness, "second", train_seconds=60.0)

    estimate = second["estimate"]
    assert estimate["source"] == "measured" and estimate["samples"] == 1
    assert estimate["key"] == first["estimate"]["key"]
    assert estimate["tokensPerSecond"] == pytest.approx(48_000 / 40.0)  # one process: the job's rate
    assert estimate["seconds"] == 40
    row = json.loads(harness.get(CONFIGMAPS, THROUGHPUT_CONFIG_MAP)["data"][estimate["key"]])
    assert row == [48_000 / 40.0, 48_000 / 60.0]


def test_a_spec_change_after_the_plan_deletes_the_preflight_job_once_and_plans_again(harness):
    preflight = preflight_job(harness, "edited")
    harness.patch(FINETUNEJOBS, "edited", {"spec": {"suspend": True}})
    planned(harness, preflight)
    assert harness.reconcile("edited").phase == "Suspended"
    first = harness.get(JOBS, preflight)["metadata"]["uid"]

    harness.patch(FINETUNEJOBS, "edited", {"spec": {"training": {"maxSteps": 7}}})
    harness.reconcile("edited")

    assert harness.sent("delete") == [("delete", "jobs", "200")]
    ftj = harness.ftj("edited")
    assert "plan" not in ftj["status"] and condition(ftj, "Planned")["reason"] == "SpecChanged"
    harness.reconcile("edited")
    second = harness.get(JOBS, preflight)["metadata"]["uid"]
    assert second != first, "a new preflight plans the new spec"
    harness.reconcile("edited")
    assert harness.sent("delete") == [], "the new preflight Job is the current spec's: left alone"
    assert harness.get(JOBS, preflight)["metadata"]["uid"] == second and harness.get(JOBS, "edited") is None


def claim_requests(harness) -> list[tuple]:
    return [request for request in harness.sent() if request[1] == "persistentvolumeclaims"]


def test_the_cache_claim_is_read_once_per_preflight_and_once_for_training_and_each_plan_is_counted_once(harness):
    preflight = preflight_job(harness, "cached", cache=True)
    claims = claim_requests(harness)
    assert claims == [("get", "persistentvolumeclaims", "404"), ("create", "persistentvolumeclaims", "201")]
    record = job_metrics_recorder(harness.metrics)
    planned(harness, preflight, cache={"misses": 1, "bytes": 4096})

    record(harness.namespace, "cached", harness.reconcile("cached"))
    assert claim_requests(harness) == [("get", "persistentvolumeclaims", "200")], "as the training Job is created"
    for _ in range(2):
        record(harness.namespace, "cached", harness.reconcile("cached"))
        assert claim_requests(harness) == []

    text = harness.metrics.exposition().decode()
    assert f'finetune_operator_model_cache_bytes_total{{namespace="{harness.namespace}"}} 4096.0' in text
    volumes = harness.get(JOBS, "cached")["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "finetune-model-cache", "readOnly": True} in [v.get("persistentVolumeClaim") for v in volumes]


def test_a_namespace_whose_quota_refuses_the_cache_claim_plans_without_the_cache(harness):
    """The claim's size is the admin's; a tenant namespace's storage quota below it must not stop its jobs."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "storage", "namespace": harness.namespace},
    }
    quota["spec"] = {"hard": {"requests.storage": "1Gi"}}
    harness.admin.rest.request("POST", f"/api/v1/namespaces/{harness.namespace}/resourcequotas", quota)

    preflight = preflight_job(harness, "quota", cache=True)

    assert ("create", "persistentvolumeclaims", "403") in harness.sent()
    assert harness.get(PVCS, "finetune-model-cache") is None
    assert SHARED_CACHE_ANNOTATION not in harness.get(JOBS, preflight)["metadata"]["annotations"]
    assert condition(harness.ftj("quota"), "Planned")["reason"] == "Preflight"


def test_a_cache_claim_being_deleted_is_not_mounted_and_the_next_preflight_makes_a_new_one(harness):
    """security.md: delete the claim to free its space. Its pvc-protection finalizer keeps it while pods use it."""
    harness.configure(preflight=True, cache=True)
    claim = render_cache_claim(harness.namespace, harness.context.settings)
    claim["metadata"]["finalizers"] = ["test.finetune.dev/in-use"]  # as pvc-protection holds a claim pods mount
    harness.create(claim)
    harness.admin.delete(PVCS, harness.namespace, CACHE_CLAIM)
    assert harness.get(PVCS, CACHE_CLAIM)["metadata"].get("deletionTimestamp"), "held by its finalizer"

    preflight = preflight_job(harness, "freeing", cache=True)

    assert SHARED_CACHE_ANNOTATION not in harness.get(JOBS, preflight)["metadata"]["annotations"]
    harness.patch(PVCS, CACHE_CLAIM, {"metadata": {"finalizers": None}})  # its pods gone: the claim goes
    assert harness.get(PVCS, CACHE_CLAIM) is None
    harness.admin.delete(JOBS, harness.namespace, preflight)
    harness.reconcile("freeing")
    assert ("create", "persistentvolumeclaims", "201") in harness.sent(), "the next preflight makes a new claim"
    assert harness.get(JOBS, preflight)["metadata"]["annotations"][SHARED_CACHE_ANNOTATION] == "true"


def test_a_claim_deleted_after_the_plan_is_not_mounted_by_training_which_runs_without_the_cache(harness):
    """Deleting the claim is how a tenant frees its space (security.md); its plan's pods must not wait for it."""
    preflight = preflight_job(harness, "orphaned", cache=True)
    planned(harness, preflight, cache={"misses": 1, "bytes": 4096})
    harness.admin.delete(PVCS, harness.namespace, CACHE_CLAIM)

    harness.reconcile("orphaned")

    volumes = harness.get(JOBS, "orphaned")["spec"]["template"]["spec"]["volumes"]
    assert "finetune-model-cache" not in [(v.get("persistentVolumeClaim") or {}).get("claimName") for v in volumes]
    assert harness.get(PVCS, CACHE_CLAIM) is None, "training makes no claim: the next preflight does"
    harness.reconcile("orphaned")
    assert claim_requests(harness) == [], "the Job, once made, says whether its pods read the cache"
