"""publish() and reconcile_adapter() in-process, with a real S3 server (MinIO): a FineTuneJob that succeeds and
passes its gate publishes a ModelAdapter (and only then), and ModelAdapters are verified against their
artifact. Results are believed only from what the operator owns."""

from __future__ import annotations

import json

import pytest
from adapter_artifacts import (
    adapter_dir,  # noqa: F401 - a fixture
    evaluation,
    manifest_digest,
    model_adapter,
    new_bucket,
    upload,
    write_manifest,
)
from finetune_core.api import REPORT_FILE_NAME, FinalSummary, TrainerConfig
from finetune_operator.kube import CONFIGMAPS, JOBS, MODELADAPTERS, SECRETS
from operator_harness import condition, training_job

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(minio, harness) -> str:
    name = new_bucket(minio)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}}
    harness.create({**secret, "stringData": dict(minio.credentials)})
    return name


def training(harness, name: str, bucket: str) -> tuple[dict, TrainerConfig]:
    """A job writing to ``bucket`` whose rank 0 runs; and the trainer configuration it runs with."""
    manifest = training_job(name, harness.namespace)
    manifest["spec"]["resources"] = {"gpusPerNode": 1}
    manifest["spec"]["model"] = {"uri": "hf://example/tiny-llama", "revision": "main"}
    manifest["spec"]["method"] = {"type": "lora", "lora": {"rank": 16, "alpha": 32, "targetModules": ["all-linear"]}}
    manifest["spec"]["output"] = {"uri": f"s3://{bucket}/", "credentialsSecretRef": {"name": "s3-creds"}}
    manifest["spec"]["adapter"] = {"name": f"{name}-adapter", "labels": {"team": "a"}}
    harness.create(manifest)
    harness.reconcile(name)
    (pod,) = harness.start_pods(name)
    config = TrainerConfig.model_validate_json(harness.get(CONFIGMAPS, f"{name}-config")["data"]["config.json"])
    return pod, config


def succeed(harness, name: str, pod: dict, message: str = "") -> None:
    harness.finish_pod(pod["metadata"]["name"], 0, message)
    harness.complete_job(name)


def adapters(harness) -> list[dict]:
    return harness.admin.list(MODELADAPTERS, harness.namespace)


def test_a_succeeded_job_publishes_a_ready_adapter_that_outlives_the_job(harness, minio, bucket, adapter_dir):  # noqa: F811
    pod, config = training(harness, "support-bot", bucket)
    uri = upload(minio, adapter_dir, bucket, config.output.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/"))
    final = {
        "stage": "done",
        "step": 40,
        "totalSteps": 40,
        "evaluation": evaluation("Passed"),
        "modelRevision": "0123456789abcdef0123456789abcdef01234567",
        "artifact": {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000},
    }
    harness.report(harness.progress_service(), "support-bot", harness.token_for(pod), final)
    succeed(harness, "support-bot", pod)

    assert harness.reconcile("support-bot").phase == "Succeeded"

    ftj = harness.ftj("support-bot")
    published = condition(ftj, "Published")
    assert published["status"] == "True" and "support-bot-adapter" in published["message"]
    assert ftj["status"]["adapter"] == {
        "name": "support-bot-adapter",
        "uri": uri,
        "digest": manifest_digest(adapter_dir),
    }
    assert condition(ftj, "Evaluated")["reason"] == "GatePassed"
    adapter = harness.adapter("support-bot-adapter")
    assert adapter["metadata"]["labels"]["finetune.dev/job"] == "support-bot"
    assert adapter["metadata"]["labels"]["team"] == "a"
    assert not adapter["metadata"].get("ownerReferences"), "a published adapter must outlive its job"
    spec = adapter["spec"]
    assert spec["baseModel"] == {
        "uri": "hf://example/tiny-llama",
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "servedName": "tiny-llama",
    }
    # all-linear as PEFT resolved it, read from the artifact's own adapter_config.json.
    assert spec["lora"] == {"rank": 16, "alpha": 32, "targetModules": ["q_proj", "v_proj"]}
    assert spec["artifact"] == {
        "uri": uri,
        "digest": manifest_digest(adapter_dir),
        "credentialsSecretRef": {"name": "s3-creds"},
    }
    assert spec["source"] == {"fineTuneJob": "support-bot", "uid": ftj["metadata"]["uid"]}
    assert spec["evaluation"]["gate"] == "Passed"
    row = harness.cluster.run_kubectl("get", "ftj", "support-bot", "-n", harness.namespace, "--no-headers").stdout
    assert row.split()[1] == "Succeeded" and "support-bot-adapter" in row.split()

    assert harness.reconcile_adapter("support-bot-adapter").phase == "Ready"
    assert condition(harness.adapter("support-bot-adapter"), "Ready")["status"] == "True"
    harness.reconcile("support-bot")
    assert harness.sent() == [], "a published job is settled: nothing more is read or written"
    assert len(adapters(harness)) == 1


def test_a_failed_gate_fails_the_job_and_publishes_nothing(harness, bucket):
    pod, _ = training(harness, "forgetful", bucket)
    report = {"stage": "evaluating", "step": 40, "evaluation": evaluation("Failed")}
    harness.report(harness.progress_service(), "forgetful", harness.token_for(pod), report)
    message = "evaluation gate failed: general loss 2.5000 -> 3.5000 (+40.0%; allowed increase 5.0%) FAILED"
    harness.finish_pod(pod["metadata"]["name"], 79, message)
    harness.fail_job("forgetful")

    assert harness.reconcile("forgetful").phase == "Failed"

    ftj = harness.ftj("forgetful")
    failed = condition(ftj, "Failed")
    assert failed["reason"] == "GateFailed" and "general loss 2.5000 -> 3.5000" in failed["message"]
    assert condition(ftj, "Evaluated")["status"] == "False"
    assert adapters(harness) == []


def test_a_job_whose_report_was_not_pushed_publishes_from_the_report_next_to_its_checkpoints(
    harness,
    minio,
    bucket,
    adapter_dir,  # noqa: F811
):
    pod, config = training(harness, "quiet", bucket)
    uri = upload(minio, adapter_dir, bucket, config.output.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/"))
    report = {
        "job": {"namespace": harness.namespace, "name": "quiet"},
        "configSha256": "0" * 64,
        "evaluation": evaluation("Passed"),
        "artifact": {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000},
    }
    key = f"{config.output.checkpoints_uri.removeprefix(f's3://{bucket}/')}{REPORT_FILE_NAME}"
    minio.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(report).encode())
    succeed(harness, "quiet", pod)

    harness.reconcile("quiet")

    assert condition(harness.ftj("quiet"), "Published")["status"] == "True"
    assert harness.ftj("quiet")["status"]["artifact"]["uri"] == uri
    assert harness.reconcile_adapter("quiet-adapter").phase == "Ready"


def test_a_final_summary_in_the_termination_message_publishes(harness, minio, bucket, adapter_dir):  # noqa: F811
    pod, config = training(harness, "terse", bucket)
    uri = upload(minio, adapter_dir, bucket, config.output.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/"))
    artifact = {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000}
    summary = FinalSummary.model_validate({"artifact": artifact, "evaluation": evaluation("Passed")})
    succeed(harness, "terse", pod, summary.to_message())

    harness.reconcile("terse")

    assert condition(harness.ftj("terse"), "Published")["status"] == "True"
    assert harness.adapter("terse-adapter")["spec"]["artifact"]["digest"] == manifest_digest(adapter_dir)


def test_a_job_with_no_artifact_at_all_says_so(harness, bucket):
    pod, _ = training(harness, "empty-handed", bucket)
    succeed(harness, "empty-handed", pod)

    harness.reconcile("empty-handed")

    ftj = harness.ftj("empty-handed")
    unpublished = condition(ftj, "Published")
    assert (unpublished["status"], unpublished["reason"]) == ("False", "ArtifactUnknown")
    assert "no final progress report or termination message" in unpublished["message"]
    assert condition(ftj, "Succeeded")["status"] == "True"


def test_a_forged_pods_termination_message_publishes_nothing(harness, bucket):
    """A tenant's pod dressed as the job's (its labels, its container name, a final status with a summary), but
    not created by the job's Job: its controller chain does not lead to the FineTuneJob."""
    pod, _ = training(harness, "forged", bucket)
    tenant_artifact = {"uri": f"s3://{bucket}/tenant/elsewhere/v1/", "digest": "sha256:" + "e" * 64, "sizeBytes": 1}
    summary = FinalSummary.model_validate({"artifact": tenant_artifact, "evaluation": evaluation("Passed")})
    labels = {k: v for k, v in pod["metadata"]["labels"].items() if not k.endswith("controller-uid")}
    forged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "forged-0-forged", "labels": labels},
        "spec": {"schedulerName": "inprocess-tests", "containers": [{"name": "trainer", "image": "trainer"}]},
    }
    harness.create(forged)
    harness.finish_pod("forged-0-forged", 0, summary.to_message())
    succeed(harness, "forged", pod)

    harness.reconcile("forged")

    unpublished = condition(harness.ftj("forged"), "Published")
    assert unpublished["reason"] == "ArtifactUnknown"
    status = harness.ftj("forged")["status"]
    assert "artifact" not in status and "evaluation" not in status and "adapter" not in status
    assert adapters(harness) == []


def test_a_pre_created_adapter_with_the_jobs_uid_and_another_artifact_is_not_taken_over(harness, bucket):
    pod, config = training(harness, "coveted", bucket)
    uid = harness.ftj("coveted")["metadata"]["uid"]
    decoy_uri = f"s3://{bucket}/tenant/decoy/v1/"
    source = {"fineTuneJob": "coveted", "uid": uid}
    harness.create(model_adapter("coveted-adapter", harness.namespace, decoy_uri, "sha256:" + "e" * 64, source=source))
    digest = "sha256:" + "a" * 64
    artifact = {"uri": config.output.artifact_uri, "digest": digest, "sizeBytes": 1000}
    final = {"stage": "done", "step": 40, "evaluation": evaluation("Passed"), "artifact": artifact}
    harness.report(harness.progress_service(), "coveted", harness.token_for(pod), final)
    succeed(harness, "coveted", pod)

    harness.reconcile("coveted")

    ftj = harness.ftj("coveted")
    taken = condition(ftj, "Published")
    assert taken["reason"] == "AdapterNameTaken" and "coveted-adapter" in taken["message"]
    assert "adapter" not in ftj["status"] and ftj["status"]["artifact"]["digest"] == digest
    assert condition(ftj, "Evaluated")["reason"] == "GatePassed"
    assert harness.adapter("coveted-adapter")["spec"]["artifact"]["uri"] == decoy_uri


def test_a_pushed_verdict_without_numbers_publishes_nothing_and_says_the_numbers_are_missing(harness, bucket):
    pod, config = training(harness, "say-so", bucket)
    artifact = {"uri": config.output.artifact_uri, "digest": "sha256:" + "a" * 64, "sizeBytes": 1000}
    final = {"stage": "done", "step": 40, "evaluation": {"gate": "Passed", "message": "trust me"}, "artifact": artifact}
    harness.report(harness.progress_service(), "say-so", harness.token_for(pod), final)
    assert harness.ftj("say-so")["status"]["evaluation"]["gate"] == "Failed"
    succeed(harness, "say-so", pod)

    harness.reconcile("say-so")

    ftj = harness.ftj("say-so")
    assert condition(ftj, "Published")["reason"] == "GateFailed"
    evaluated = condition(ftj, "Evaluated")
    assert evaluated["status"] == "False" and "task loss not measured" in evaluated["message"]
    assert "trust me" not in evaluated["message"]
    assert adapters(harness) == []


# -- ModelAdapters: verification -------------------------------------------------------------------------


def test_an_imported_adapter_in_s3_is_verified_and_ready(harness, minio, bucket, adapter_dir):  # noqa: F811
    uri = upload(minio, adapter_dir, bucket, "team-a/sql-helper/v1")
    digest = manifest_digest(adapter_dir)
    harness.create(model_adapter("sql-helper", harness.namespace, uri, digest, lora={"rank": 16}))

    assert harness.reconcile_adapter("sql-helper").phase == "Ready"

    adapter = harness.adapter("sql-helper")
    assert digest in condition(adapter, "Ready")["message"]
    status = adapter["status"]
    assert status["phase"] == "Ready" and status["digest"] == digest
    assert status["requiredMaxLoraRank"] == 16
    assert status["targetModules"] == ["q_proj", "v_proj"]
    assert condition(adapter, "ServingCompatible")["status"] == "True"
    row = harness.cluster.run_kubectl(
        "get", "modeladapters.finetune.dev", "sql-helper", "-n", harness.namespace, "--no-headers"
    ).stdout
    assert row.split()[1:4] == ["Ready", "hf://example/tiny-llama", "16"]
    assert "Verified" in {e["reason"] for e in harness.events("sql-helper")}
    harness.reconcile_adapter("sql-helper")
    assert harness.sent() == [], "a recently verified adapter costs nothing"


def test_a_ready_adapter_is_verified_again_and_fails_only_when_its_artifact_is_gone(
    harness,
    minio,
    bucket,
    adapter_dir,  # noqa: F811
):
    uri = upload(minio, adapter_dir, bucket, "team-a/rechecked/v1")
    harness.create(model_adapter("rechecked", harness.namespace, uri))
    assert harness.reconcile_adapter("rechecked").phase == "Ready"

    def verified_long_ago() -> None:  # as if the hourly re-verification were due
        harness.patch(MODELADAPTERS, "rechecked", {"status": {"verifiedAt": "2020-01-01T00:00:00Z"}}, "status")

    # The store's credentials are away for a while: that says nothing about the artifact; it stays Ready.
    harness.admin.delete(SECRETS, harness.namespace, "s3-creds")
    verified_long_ago()
    assert harness.reconcile_adapter("rechecked").phase == "Ready"
    adapter = harness.adapter("rechecked")
    assert adapter["status"]["phase"] == "Ready" and condition(adapter, "Ready")["status"] == "True"

    # Back, and the weights were deleted behind its back: now it fails, saying which file is missing.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}}
    harness.create({**secret, "stringData": dict(minio.credentials)})
    minio.client().delete_object(Bucket=bucket, Key="team-a/rechecked/v1/adapter_model.safetensors")
    verified_long_ago()

    assert harness.reconcile_adapter("rechecked").phase == "Failed"
    failed = condition(harness.adapter("rechecked"), "Ready")
    assert failed["reason"] == "FileMissing" and "adapter_model.safetensors" in failed["message"]


def test_an_adapter_whose_artifact_is_missing_fails_with_the_reason(harness, bucket):
    harness.create(model_adapter("ghost", harness.namespace, f"s3://{bucket}/nowhere/v1/"))

    assert harness.reconcile_adapter("ghost").phase == "Failed"

    failed = condition(harness.adapter("ghost"), "Ready")
    assert failed["reason"] == "ArtifactNotFound" and "manifest.json" in failed["message"]
    harness.reconcile_adapter("ghost")
    assert harness.sent() == [], "a failed verification is retried after a while, not at every event"


def test_a_dora_adapter_is_not_servable(harness, minio, bucket, adapter_dir, tmp_path):  # noqa: F811
    dora = tmp_path / "dora"
    dora.mkdir()
    for path in adapter_dir.iterdir():
        (dora / path.name).write_bytes(path.read_bytes())
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    digest = write_manifest(dora)
    harness.create(model_adapter("dora", harness.namespace, upload(minio, dora, bucket, "team-a/dora/v1"), digest))

    harness.reconcile_adapter("dora")

    adapter = harness.adapter("dora")
    failed = condition(adapter, "Ready")
    assert failed["reason"] == "NotServable" and "DoRA" in failed["message"]
    assert condition(adapter, "ArtifactVerified")["status"] == "True"
    assert condition(adapter, "ServingCompatible")["status"] == "False"


def test_a_tampered_file_or_a_wrong_digest_fails_verification(harness, minio, bucket, adapter_dir):  # noqa: F811
    uri = upload(minio, adapter_dir, bucket, "team-a/tampered/v1")
    minio.client().put_object(Bucket=bucket, Key="team-a/tampered/v1/adapter_config.json", Body=b'{"r": 16}')
    harness.create(model_adapter("tampered", harness.namespace, uri))
    intact = upload(minio, adapter_dir, bucket, "team-a/intact/v1")
    harness.create(model_adapter("wrong-digest", harness.namespace, intact, "sha256:" + "0" * 64))

    harness.reconcile_adapter("tampered")
    harness.reconcile_adapter("wrong-digest")

    failed = condition(harness.adapter("tampered"), "Ready")
    assert failed["reason"] == "FileCorrupt" and "adapter_config.json" in failed["message"]
    assert condition(harness.adapter("wrong-digest"), "Ready")["reason"] == "DigestMismatch"


def test_a_verification_pod_that_says_nothing_fails_the_adapter_and_a_missing_claim_gets_no_pod(harness):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "adapters"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    harness.create(claim)
    on_volume = model_adapter(
        "unplaced", harness.namespace, "pvc://adapters/team-a/unplaced/v1/", "sha256:" + "ab" * 32, keys_in=None
    )
    harness.create(on_volume)
    elsewhere = {**on_volume, "metadata": {"name": "elsewhere"}}
    elsewhere["spec"] = {**on_volume["spec"], "artifact": {"uri": "pvc://no-such-claim/x/v1/"}}
    harness.create(elsewhere)

    assert harness.reconcile_adapter("unplaced").phase == "Verifying"

    verifying = condition(harness.adapter("unplaced"), "Ready")
    assert verifying["reason"] == "Verifying" and "unplaced-verify-1" in verifying["message"]
    job = harness.get(JOBS, "unplaced-verify-1")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelAdapter"
    # A pod that completes without a termination message (not the verifier's) is no verification.
    (pod,) = harness.start_pods("unplaced-verify-1")
    harness.finish_pod(pod["metadata"]["name"], 0)
    harness.complete_job("unplaced-verify-1")

    assert harness.reconcile_adapter("unplaced").phase == "Failed"
    failed = condition(harness.adapter("unplaced"), "Ready")
    assert failed["reason"] == "VerificationFailed" and "unplaced-verify-1" in failed["message"]

    assert harness.reconcile_adapter("elsewhere").phase == "Failed"
    no_claim = condition(harness.adapter("elsewhere"), "Ready")
    assert no_claim["reason"] == "ClaimNotFound" and "no-such-claim" in no_claim["message"]
    assert harness.get(JOBS, "elsewhere-verify-1") is None
