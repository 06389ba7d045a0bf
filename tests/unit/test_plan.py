"""The preflight's Job, the reading of its report (bounded, validated, never echoed) and the estimate's arithmetic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from catalog import edited, valid_job
from finetune_core.api import (
    CacheCounts,
    FineTuneJob,
    FineTuneJobStatus,
    Plan,
    PreflightPlan,
    PreflightReport,
    TokenCounts,
)
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.naming import PLAN_HASH_ANNOTATION, SHARED_CACHE_ANNOTATION
from finetune_operator.planner import (
    EFFECTIVE_FLOPS,
    estimate,
    human_duration,
    parameter_bucket,
    recorded,
    sequence_bucket,
    table_key,
)
from finetune_operator.render.job import render_job
from finetune_operator.render.preflight import plan_hash, render_preflight_job
from finetune_operator.render.shared_cache import CACHE_CLAIM, CACHE_DIR, is_ours, render_cache_claim
from finetune_operator.settings import Settings
from finetune_operator.status.conditions import get_condition
from finetune_operator.status.plan import (
    Preflight,
    apply_outcome,
    pinned_revision,
    plan_used_cache,
    preflight_outcome,
)

NAMESPACE = "team-a"
JOB_UID = "uid-1"
PREFLIGHT_UID = "uid-preflight"
NOW = "2025-03-04T10:00:00Z"
SETTINGS = Settings(default_output_uri="s3://models/out", preflight=True)
CACHE_SETTINGS = Settings(default_output_uri="s3://models/out", preflight=True, cache=True, cache_max_bytes=5000)


def make_job(**edits: Any) -> FineTuneJob:
    base = {"metadata.namespace": NAMESPACE, "metadata.uid": JOB_UID, "metadata.generation": 1}
    return FineTuneJob.model_validate(edited(valid_job("demo"), {**base, **edits}))


def preflight_job(
    *conditions: str, owner_uid: str = JOB_UID, planned: FineTuneJob | None = None, shared_cache: bool = False
) -> dict[str, Any]:
    """The preflight Job of ``planned`` (by default, of make_job()'s spec), as rendered: its metadata."""
    rendered = render_preflight_job(planned or make_job(), CACHE_SETTINGS, shared_cache)
    return {
        "metadata": {
            "name": "demo-preflight",
            "namespace": NAMESPACE,
            "uid": PREFLIGHT_UID,
            "annotations": rendered["metadata"]["annotations"],
            "ownerReferences": [{"kind": "FineTuneJob", "name": "demo", "uid": owner_uid, "controller": True}],
        },
        "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]},
    }


def preflight_pod(exit_code: int, message: str, owner_uid: str = PREFLIGHT_UID) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": NOW}
    return {
        "metadata": {
            "name": "demo-preflight-x",
            "ownerReferences": [{"kind": "Job", "name": "demo-preflight", "uid": owner_uid, "controller": True}],
        },
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]},
    }


PLAN = PreflightPlan(
    parameters=494_000_000,
    examples=TokenCounts(train=900, eval=50, general=100),
    tokens=TokenCounts(train=120_000, eval=6_000, general=9_000),
    steps_per_epoch=30,
    total_steps=60,
    epochs=2,
    trained_tokens=240_000,
)


# -- the preflight Job -------------------------------------------------------------------------


def test_the_preflight_job_requests_no_gpu_and_tolerates_no_gpu_taint():
    manifest = render_preflight_job(make_job(**{"spec.resources": {"gpusPerNode": 8, "nodes": 2}}), SETTINGS)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    assert container["command"][-2:] == ["--processes=16", "--accelerator=gpu"]


def test_the_preflight_job_is_restricted_owned_labelled_and_has_its_own_deadline():
    manifest = render_preflight_job(make_job(), SETTINGS)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest["spec"]["activeDeadlineSeconds"] == SETTINGS.preflight_deadline_seconds
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == JOB_UID
    assert manifest["metadata"]["labels"]["finetune.dev/job"] == "demo"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    assert pod["containers"][0]["terminationMessagePolicy"] == "File"


def test_a_gpu_jobs_node_selector_is_not_the_preflights():
    job = make_job(**{"spec.template.nodeSelector": {"nvidia.com/gpu.product": "H100"}})
    assert "nodeSelector" not in render_preflight_job(job, SETTINGS)["spec"]["template"]["spec"]


def test_a_cpu_job_is_planned_for_cpu_on_the_nodes_it_chose():
    job = make_job(**{"spec.resources": {"gpusPerNode": 0}, "spec.template.nodeSelector": {"pool": "cpu"}})
    pod = render_preflight_job(job, SETTINGS)["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][-1] == "--accelerator=cpu"
    assert pod["nodeSelector"] == {"pool": "cpu"}


# -- reading the report --------------------------------------------------------------------------


def test_a_complete_preflight_gives_its_plan():
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    outcome = preflight_outcome(make_job(), preflight_job("Complete"), [preflight_pod(0, report)])
    assert outcome.state == "Planned" and outcome.plan == PLAN


def test_a_report_over_the_limit_is_not_read():
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    padded = report[:-1] + " " * 5000 + "}"
    outcome = preflight_outcome(make_job(), preflight_job("Complete"), [preflight_pod(0, padded)])
    assert outcome.state == "Failed" and outcome.reason == "PreflightUnreadable"


@pytest.mark.parametrize(
    "message",
    ["not json", '{"outcome": "Planned", "plan": {"totalSteps": -1}}', '{"outcome": "Planned", "extra": 1}'],
)
def test_an_invalid_report_is_unreadable_and_not_echoed(message):
    outcome = preflight_outcome(make_job(), preflight_job("Complete"), [preflight_pod(0, message)])
    assert outcome.state == "Failed" and message not in outcome.message


def test_a_pod_of_another_job_is_not_believed():
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    outcome = preflight_outcome(make_job(), preflight_job("Complete"), [preflight_pod(0, report, owner_uid="other")])
    assert outcome.state == "Failed"


def test_bad_data_names_only_rows_of_the_jobs_own_files():
    report = PreflightReport(
        outcome="DataError",
        origins=["s3://datasets/train.jsonl:7", "s3://elsewhere/x.jsonl:3", "s3://datasets/train.jsonl.evil:1"],
    ).to_message()
    outcome = preflight_outcome(make_job(), preflight_job("Failed"), [preflight_pod(65, report)])
    assert outcome.state == "DataError" and outcome.origins == ("s3://datasets/train.jsonl:7",)


@pytest.mark.parametrize("name", ["\x1b]0;owned\x07x.jsonl", "\u202etxt.exe", "tab\tname.jsonl"])
def test_an_origin_that_is_not_printable_ascii_is_never_shown(name):
    # Under the job's own URI, so only the characters tell it apart: a bucket's keys need not be the author's.
    report = json.dumps({"outcome": "DataError", "origins": [f"s3://datasets/train.jsonl/{name}:7"]})
    outcome = preflight_outcome(make_job(), preflight_job("Failed"), [preflight_pod(65, report)])
    assert outcome.state == "DataError" and outcome.origins == ()


def test_another_failure_is_described_by_its_exit_code_alone():
    outcome = preflight_outcome(make_job(), preflight_job("Failed"), [preflight_pod(78, "<script>lies</script>")])
    assert outcome.state == "Failed" and outcome.reason == "ConfigurationError"
    assert "lies" not in outcome.message and "code 78" in outcome.message


def test_a_job_failed_by_its_pod_failure_policy_waits_for_the_pods_exit():
    failed = preflight_job("Failed")
    failed["status"]["conditions"][0]["reason"] = "PodFailurePolicy"
    assert preflight_outcome(make_job(), failed, []).state == "Running"


def test_a_preflight_without_a_finished_pod_is_running():
    assert preflight_outcome(make_job(), preflight_job(), []).state == "Running"
    assert preflight_outcome(make_job(), None, []).state == "Missing"


# -- a plan of an earlier spec ------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        {"spec.model.uri": "hf://Qwen/Qwen2.5-1.5B-Instruct"},
        {"spec.model.revision": "v2"},
        {"spec.model.credentialsSecretRef": {"name": "other-hub-token"}},
        {"spec.data.train": [{"uri": "s3://datasets/other.jsonl"}]},
        {"spec.data.maxInvalidFraction": 0.1},
        {"spec.training.maxSteps": 7},
        {"spec.training.maxSeqLength": 512},
        {"spec.method": {"type": "full"}},
        {"spec.objective": "pretrain"},
        {"spec.evaluation": {"maxSamples": 7}},
        {"spec.resources.gpusPerNode": 2},
        {"spec.resources.nodes": 2},
        {"spec.template.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        {"spec.template.image": "registry.example/trainer:2"},
    ],
    ids=lambda edit: next(iter(edit)),
)
def test_the_plan_hash_changes_with_each_field_the_plan_depends_on(edit):
    assert plan_hash(make_job(**edit)) != plan_hash(make_job())


@pytest.mark.parametrize(
    "edit",
    [
        {"spec.suspend": True},
        {"spec.model.servedName": "qwen"},
        {"spec.output.uri": "s3://elsewhere/out"},
        {"spec.adapter.name": "renamed"},
        {"spec.evaluation": {"gate": {"maxGeneralLossIncrease": 0.5}}},
        {"spec.resources.cpu": "8"},
        {"spec.ttlSecondsAfterFinished": 60},
        {"spec.activeDeadlineSeconds": 3600},
        {"metadata.labels": {"team": "a"}},
    ],
    ids=lambda edit: next(iter(edit)),
)
def test_the_plan_hash_ignores_fields_the_plan_does_not_depend_on(edit):
    assert plan_hash(make_job(**edit)) == plan_hash(make_job())


def test_the_preflight_job_is_stamped_with_its_plan_hash():
    job = make_job()
    assert render_preflight_job(job, SETTINGS)["metadata"]["annotations"][PLAN_HASH_ANNOTATION] == plan_hash(job)


def test_a_preflight_job_of_an_earlier_spec_is_stale_whatever_it_reported():
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    changed = make_job(**{"spec.training.maxSteps": 7})
    assert preflight_outcome(changed, preflight_job("Complete"), [preflight_pod(0, report)]).state == "Stale"
    assert preflight_outcome(changed, preflight_job(planned=changed), []).state == "Running"


def test_a_preflight_job_without_the_stamp_is_stale():
    unstamped = preflight_job("Complete")
    del unstamped["metadata"]["annotations"]
    assert preflight_outcome(make_job(), unstamped, []).state == "Stale"


def test_a_stale_plan_leaves_the_status_and_the_job_waits_for_the_new_one():
    job = make_job()
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    status = FineTuneJobStatus()
    apply_outcome(
        status, job, preflight_outcome(job, preflight_job("Complete"), [preflight_pod(0, report)]), NOW, _estimate
    )
    assert status.plan.steps == 60

    changed = make_job(**{"spec.training.maxSteps": 7})
    outcome = preflight_outcome(changed, preflight_job("Complete"), [preflight_pod(0, report)])
    apply_outcome(status, changed, outcome, NOW, _estimate)
    assert status.plan is None
    assert get_condition(status.conditions, "Planned").reason == "SpecChanged"
    assert get_condition(status.conditions, "Created").reason == "AwaitingPreflight"


# -- the pinned revision ------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_planned_job_trains_on_the_revision_its_preflight_resolved_and_shows_it():
    job = make_job(**{"spec.model.revision": "main"})
    report = PreflightReport(outcome="Planned", plan=PLAN.model_copy(update={"model_revision": COMMIT})).to_message()
    outcome = preflight_outcome(job, preflight_job("Complete", planned=job), [preflight_pod(0, report)])
    assert pinned_revision(job, outcome) == COMMIT
    status = FineTuneJobStatus()
    apply_outcome(status, job, outcome, NOW, _estimate)
    assert status.plan.model_revision == COMMIT and status.model.revision == COMMIT


def test_a_job_waiting_for_its_preflight_pins_nothing_yet():
    job = make_job(**{"spec.model.revision": "main"})
    assert pinned_revision(job, Preflight("Running")) is None
    assert pinned_revision(job, Preflight("Stale")) is None


def test_a_job_past_its_preflight_keeps_the_revision_of_its_plan():
    job = make_job(**{"status.plan": {"modelRevision": COMMIT}})
    assert pinned_revision(job, None) == COMMIT
    assert pinned_revision(make_job(), None) is None  # no preflight ran: the spec's revision, as before


def test_a_stale_plan_takes_its_revision_with_it():
    job = make_job()
    report = PreflightReport(outcome="Planned", plan=PLAN.model_copy(update={"model_revision": COMMIT})).to_message()
    status = FineTuneJobStatus()
    apply_outcome(
        status, job, preflight_outcome(job, preflight_job("Complete"), [preflight_pod(0, report)]), NOW, _estimate
    )
    changed = make_job(**{"spec.model.revision": "v2"})
    apply_outcome(status, changed, preflight_outcome(changed, preflight_job("Complete"), []), NOW, _estimate)
    assert status.plan is None and status.model is None


# -- the shared model cache -----------------------------------------------------------------------


def _cache_volume(pod: dict[str, Any]) -> tuple[dict, dict, dict[str, str]]:
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v and v["name"] == "shared-model-cache"]
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    return volume, mount, {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_preflight_mounts_the_namespaces_cache_read_write_with_its_limit():
    pod = render_preflight_job(make_job(), CACHE_SETTINGS, shared_cache=True)["spec"]["template"]["spec"]
    volume, mount, env = _cache_volume(pod)
    assert volume["persistentVolumeClaim"] == {"claimName": CACHE_CLAIM, "readOnly": False}
    assert mount == {"name": volume["name"], "mountPath": CACHE_DIR, "readOnly": False}
    assert env["FINETUNE_SHARED_CACHE_DIR"] == CACHE_DIR and env["FINETUNE_SHARED_CACHE_MAX_BYTES"] == "5000"
    assert "FINETUNE_SHARED_CACHE_READONLY" not in env


def test_training_pods_mount_the_cache_read_only():
    pod = render_job(make_job(), CACHE_SETTINGS, "hash", shared_cache=True)["spec"]["template"]["spec"]
    volume, mount, env = _cache_volume(pod)
    assert volume["persistentVolumeClaim"]["readOnly"] is True and mount["readOnly"] is True
    assert env["FINETUNE_SHARED_CACHE_READONLY"] == "1" and "FINETUNE_SHARED_CACHE_MAX_BYTES" not in env


def test_without_the_cache_no_pod_mounts_it():
    for pod in (
        render_preflight_job(make_job(), CACHE_SETTINGS)["spec"]["template"]["spec"],
        render_job(make_job(), CACHE_SETTINGS, "hash")["spec"]["template"]["spec"],
    ):
        assert CACHE_CLAIM not in json.dumps(pod) and "FINETUNE_SHARED_CACHE" not in json.dumps(pod)


def test_the_cache_claim_is_read_write_many_labelled_as_ours_in_the_jobs_namespace():
    claim = render_cache_claim(NAMESPACE, CACHE_SETTINGS.model_copy(update={"cache_storage_class": "nfs"}))
    assert claim["metadata"]["namespace"] == NAMESPACE and claim["metadata"]["name"] == CACHE_CLAIM
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs"
    assert is_ours(claim)
    assert "storageClassName" not in render_cache_claim(NAMESPACE, CACHE_SETTINGS)["spec"]  # the default class


def test_a_claim_of_that_name_without_our_labels_is_not_ours():
    claim = render_cache_claim(NAMESPACE, CACHE_SETTINGS)
    claim["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "finetune-operator"}
    assert not is_ours(claim) and not is_ours(None)


def test_training_uses_the_cache_exactly_when_its_plan_was_made_with_it():
    job = make_job()
    with_cache = PLAN.model_copy(update={"cache": CacheCounts(misses=1, bytes=10)})
    assert plan_used_cache(job, Preflight("Planned", plan=with_cache))
    assert not plan_used_cache(job, Preflight("Planned", plan=PLAN))
    assert not plan_used_cache(job, Preflight("Running"))
    assert plan_used_cache(make_job(**{"status.plan": {"cache": {"hits": 1}}}), None)
    assert not plan_used_cache(make_job(**{"status.plan": {"steps": 3}}), None)


def test_the_plan_carries_the_preflights_cache_counts_and_the_metrics_count_them_per_namespace():
    job = make_job()
    counts = CacheCounts(hits=1, misses=1, bytes=2048, evictions=2, refills=1)
    report = PreflightReport(outcome="Planned", plan=PLAN.model_copy(update={"cache": counts})).to_message()
    status = FineTuneJobStatus()
    planned = preflight_job("Complete", shared_cache=True)
    apply_outcome(status, job, preflight_outcome(job, planned, [preflight_pod(0, report)]), NOW, _estimate)
    assert status.plan.cache == counts
    metrics = OperatorMetrics()
    metrics.cache_used(NAMESPACE, status.plan)
    metrics.cache_used(NAMESPACE, status.plan)
    text = metrics.exposition().decode()
    assert f'finetune_operator_model_cache_bytes_total{{namespace="{NAMESPACE}"}} 4096.0' in text
    assert f'finetune_operator_model_cache_evictions_total{{namespace="{NAMESPACE}"}} 4.0' in text


def test_cache_counts_from_a_preflight_that_was_not_given_the_cache_are_not_believed():
    """The pod is the tenant's: a report may claim a cache the operator never mounted (cache off, or a claim of
    that name that is not ours). Believed, it would mount that claim into the training pods and feed the counters."""
    job = make_job()
    forged = PLAN.model_copy(update={"cache": CacheCounts(hits=1000, bytes=2**62)})
    report = PreflightReport(outcome="Planned", plan=forged).to_message()
    outcome = preflight_outcome(job, preflight_job("Complete"), [preflight_pod(0, report)])
    assert outcome.state == "Planned" and outcome.plan.cache is None
    assert not plan_used_cache(job, outcome)
    assert SHARED_CACHE_ANNOTATION not in render_preflight_job(job, CACHE_SETTINGS)["metadata"]["annotations"]


def test_a_planned_dry_run_stays_planned_when_its_preflight_pod_is_gone():
    """Pod GC (or a CPU node scaled away) deletes the finished pod: the plan is in status.plan already."""
    job = make_job(**{"spec.suspend": True})
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    status = FineTuneJobStatus()
    apply_outcome(
        status, job, preflight_outcome(job, preflight_job("Complete"), [preflight_pod(0, report)]), NOW, _estimate
    )
    planned = make_job(**{"spec.suspend": True, "status": status.to_api()})

    outcome = preflight_outcome(planned, preflight_job("Complete"), [])
    later = planned.status.model_copy(deep=True)
    apply_outcome(later, planned, outcome, NOW, _estimate)

    assert outcome.state == "Planned" and later.phase == "Suspended" and later.plan == status.plan
    assert preflight_outcome(make_job(), preflight_job("Complete"), []).state == "Failed", "never planned: unreadable"


# -- the status ----------------------------------------------------------------------------------


def _estimate(plan: Plan):
    return estimate(make_job(), plan, {})


def test_bad_data_fails_the_job_with_the_file_and_line():
    report = PreflightReport(outcome="DataError", origins=["s3://datasets/train.jsonl:7"]).to_message()
    job = make_job()
    status = FineTuneJobStatus()
    apply_outcome(status, job, preflight_outcome(job, preflight_job("Failed"), [preflight_pod(65, report)]), NOW, None)
    failed = get_condition(status.conditions, "Failed")
    assert status.phase == "Failed" and failed.status == "True" and failed.reason == "DataError"
    assert "s3://datasets/train.jsonl:7" in failed.message


def test_a_suspended_job_is_planned_and_estimated_as_a_dry_run():
    job = make_job(**{"spec.suspend": True})
    report = PreflightReport(outcome="Planned", plan=PLAN).to_message()
    status = FineTuneJobStatus()
    outcome = preflight_outcome(job, preflight_job("Complete"), [preflight_pod(0, report)])
    apply_outcome(status, job, outcome, NOW, _estimate)
    assert status.phase == "Suspended" and get_condition(status.conditions, "Suspended").reason == "DryRun"
    assert status.plan.steps == 60 and status.plan.tokens.train == 120_000
    assert status.plan.estimate.seconds > 0


# -- the estimate --------------------------------------------------------------------------------


def test_the_default_estimate_is_the_flop_model():
    job = make_job()  # one GPU of unnamed type, LoRA
    plan = Plan(parameters=1_000_000_000, trained_tokens=100_000_000)
    found = estimate(job, plan, {})
    rate = EFFECTIVE_FLOPS["gpu"][0] / (4 * 1e9)
    assert found.source == "default"
    assert found.tokens_per_second == pytest.approx(rate)
    assert found.seconds == pytest.approx(100_000_000 / rate, abs=1)
    assert found.gpu_hours == pytest.approx(found.seconds / 3600, abs=1e-3)


def test_full_fine_tuning_costs_six_flops_per_parameter_per_token():
    plan = Plan(parameters=1_000_000_000, trained_tokens=10_000_000)
    lora = estimate(make_job(), plan, {})
    full = estimate(make_job(**{"spec.method": {"type": "full"}}), plan, {})
    assert full.tokens_per_second == pytest.approx(lora.tokens_per_second * 4 / 6)


def test_measured_figures_win_by_their_median_and_scale_with_processes():
    job = make_job(**{"spec.resources": {"gpusPerNode": 4, "nodes": 2}})
    plan = Plan(parameters=500_000_000, trained_tokens=8_000_000)
    key = table_key(job, plan.parameters)
    found = estimate(job, plan, {key: [900.0, 1000.0, 5000.0]})
    assert found.source == "measured" and found.samples == 3
    assert found.tokens_per_second == pytest.approx(8 * 1000.0)
    assert found.seconds == 1000
    assert found.gpu_hours == pytest.approx(1000 * 8 / 3600, abs=1e-3)


@pytest.mark.parametrize("figure", [float("inf"), float("nan"), 1e308, 0.0, -5.0])
def test_a_figure_no_process_reaches_never_counts_so_every_estimate_stays_a_number(figure):
    # A tenant's reported tokens over a tiny reported time: the table row would break other tenants' estimates.
    job = make_job(**{"spec.resources": {"gpusPerNode": 4, "nodes": 2}})
    plan = Plan(parameters=500_000_000, trained_tokens=8_000_000)
    found = estimate(job, plan, {table_key(job, plan.parameters): [figure]})
    assert found.source == "default" and found.samples == 0


def test_the_key_names_accelerator_size_method_and_sequence():
    job = make_job(**{"spec.template.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}})
    assert table_key(job, 7_600_000_000) == "nvidia-h100.le8B.lora.s2048"
    assert table_key(make_job(**{"spec.resources": {"gpusPerNode": 0}}), 3_100_000) == "cpu.le10M.lora.s2048"
    assert parameter_bucket(None) == "unknown" and parameter_bucket(10**12) == "gt75B"
    assert sequence_bucket(300) == "s512" and sequence_bucket(512) == "s512"


def test_a_row_keeps_the_last_k_figures():
    assert recorded([1.0, 2.0, 3.0], 4.0, 3) == [2.0, 3.0, 4.0]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (200, "3m20s"), (3900, "1h5m")])
def test_durations_read_like_kubectl(seconds, text):
    assert human_duration(seconds) == text
