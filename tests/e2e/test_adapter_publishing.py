"""ModelAdapters on the real control plane with a real S3 server (MinIO): imported adapters are
verified, and a FineTuneJob that succeeds and passes its gate publishes one (and only then)."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from catalog import valid_job
from finetune_core.api import (
    MANIFEST_FILE_NAME,
    REPORT_FILE_NAME,
    FinalSummary,
    TrainerConfig,
    manifest_of_directory,
)
from kubehelpers import (
    apply,
    claim_on_local_volume,
    condition,
    condition_is,
    get,
    items,
    patch_pod_status,
    wait_for,
)
from test_progress import Endpoint, token_for

from hack.localcluster import free_port

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A real PEFT LoRA adapter of a tiny Llama, with its manifest, as the trainer writes one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hack.tinymodels import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("base"))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "hf://example/tiny-llama"
    (out / "adapter_config.json").write_text(json.dumps(config))
    model.get_base_model().config.to_json_file(out / "base_model_config.json")
    write_manifest(out)
    return out


def write_manifest(directory: Path) -> str:
    manifest = manifest_of_directory(directory)
    (directory / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True, indent=2))
    return manifest.digest


def upload(minio, directory: Path, bucket: str, prefix: str) -> str:
    client = minio.client()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE_NAME):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    if (directory / MANIFEST_FILE_NAME).exists():  # last, as the trainer does
        client.upload_file(str(directory / MANIFEST_FILE_NAME), bucket, f"{prefix}/{MANIFEST_FILE_NAME}")
    return f"s3://{bucket}/{prefix}/"


@pytest.fixture
def bucket(minio, cluster, namespace) -> str:
    name = f"adapters-{uuid.uuid4().hex[:10]}"
    minio.create_bucket(name)
    args = [f"--from-literal={key}={value}" for key, value in minio.credentials.items()]
    cluster.run_kubectl("create", "secret", "generic", "s3-creds", "-n", namespace, *args)
    return name


def model_adapter(name: str, namespace: str, uri: str, digest: str | None = None, **spec) -> dict:
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "hf://example/tiny-llama", "servedName": "tiny-llama"},
            "format": "peft-lora",
            "artifact": {"uri": uri, "credentialsSecretRef": {"name": "s3-creds"}},
            **spec,
        },
    }
    if digest:
        manifest["spec"]["artifact"]["digest"] = digest
    return manifest


def manifest_digest(directory: Path) -> str:
    return json.loads((directory / MANIFEST_FILE_NAME).read_text())["digest"]


def test_an_imported_adapter_in_s3_is_verified_and_ready(cluster, namespace, operator, minio, bucket, adapter_dir):
    uri = upload(minio, adapter_dir, bucket, "team-a/sql-helper/v1")
    apply(cluster, model_adapter("sql-helper", namespace, uri, manifest_digest(adapter_dir), lora={"rank": 16}))

    ready = wait_for("Ready", condition_is(cluster, namespace, "sql-helper", "Ready", kind="ftadapter"))
    assert manifest_digest(adapter_dir) in ready["message"]
    adapter = get(cluster, "ftadapter", namespace, "sql-helper")
    status = adapter["status"]
    assert status["phase"] == "Ready"
    assert status["requiredMaxLoraRank"] == 16
    assert status["targetModules"] == ["q_proj", "v_proj"]
    assert status["digest"] == manifest_digest(adapter_dir)
    assert condition(adapter, "ServingCompatible")["status"] == "True"
    row = cluster.run_kubectl("get", "modeladapters.finetune.dev", "sql-helper", "-n", namespace, "--no-headers").stdout
    assert row.split()[1:4] == ["Ready", "hf://example/tiny-llama", "16"]


def test_a_ready_adapter_is_verified_again_and_fails_only_when_its_artifact_is_gone(
    cluster, namespace, start_operator, minio, bucket, adapter_dir
):
    start_operator("--resync-seconds=1")
    uri = upload(minio, adapter_dir, bucket, "team-a/rechecked/v1")
    apply(cluster, model_adapter("rechecked", namespace, uri))
    wait_for("Ready", condition_is(cluster, namespace, "rechecked", "Ready", kind="ftadapter"))

    def verified_long_ago() -> None:  # as if the hourly re-verification were due
        patch = json.dumps({"status": {"verifiedAt": "2020-01-01T00:00:00Z"}})
        cluster.run_kubectl(
            "patch", "ftadapter", "rechecked", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
        )

    # The store's credentials are away for a while: that says nothing about the artifact; it stays Ready.
    cluster.run_kubectl("delete", "secret", "s3-creds", "-n", namespace)
    verified_long_ago()
    time.sleep(4)
    adapter = get(cluster, "ftadapter", namespace, "rechecked")
    assert adapter["status"]["phase"] == "Ready" and condition(adapter, "Ready")["status"] == "True"

    # Back, and the weights were deleted behind its back: now it fails, saying which file is missing.
    args = [f"--from-literal={key}={value}" for key, value in minio.credentials.items()]
    cluster.run_kubectl("create", "secret", "generic", "s3-creds", "-n", namespace, *args)
    minio.client().delete_object(Bucket=bucket, Key="team-a/rechecked/v1/adapter_model.safetensors")
    verified_long_ago()
    failed = wait_for("Ready=False", condition_is(cluster, namespace, "rechecked", "Ready", "False", kind="ftadapter"))
    assert failed["reason"] == "FileMissing" and "adapter_model.safetensors" in failed["message"]


def test_an_adapter_whose_artifact_is_missing_fails_with_the_reason(cluster, namespace, operator, bucket):
    apply(cluster, model_adapter("ghost", namespace, f"s3://{bucket}/nowhere/v1/"))
    failed = wait_for("Ready=False", condition_is(cluster, namespace, "ghost", "Ready", "False", kind="ftadapter"))
    assert failed["reason"] == "ArtifactNotFound"
    assert "manifest.json" in failed["message"]
    assert get(cluster, "ftadapter", namespace, "ghost")["status"]["phase"] == "Failed"


def test_a_dora_adapter_is_not_servable(cluster, namespace, operator, minio, bucket, adapter_dir, tmp_path):
    dora = tmp_path / "dora"
    dora.mkdir()
    for path in adapter_dir.iterdir():
        (dora / path.name).write_bytes(path.read_bytes())
    config = json.loads((dora / "adapter_config.json").read_text())
    config["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(config))
    digest = write_manifest(dora)
    uri = upload(minio, dora, bucket, "team-a/dora/v1")
    apply(cluster, model_adapter("dora", namespace, uri, digest))

    failed = wait_for("Ready=False", condition_is(cluster, namespace, "dora", "Ready", "False", kind="ftadapter"))
    assert failed["reason"] == "NotServable"
    assert "DoRA" in failed["message"]
    adapter = get(cluster, "ftadapter", namespace, "dora")
    assert condition(adapter, "ArtifactVerified")["status"] == "True"
    assert condition(adapter, "ServingCompatible")["status"] == "False"


def test_a_tampered_file_or_a_wrong_digest_fails_verification(cluster, namespace, operator, minio, bucket, adapter_dir):
    uri = upload(minio, adapter_dir, bucket, "team-a/tampered/v1")
    minio.client().put_object(Bucket=bucket, Key="team-a/tampered/v1/adapter_config.json", Body=b'{"r": 16}')
    apply(cluster, model_adapter("tampered", namespace, uri))
    failed = wait_for("Ready=False", condition_is(cluster, namespace, "tampered", "Ready", "False", kind="ftadapter"))
    assert failed["reason"] == "FileCorrupt" and "adapter_config.json" in failed["message"]

    intact = upload(minio, adapter_dir, bucket, "team-a/intact/v1")
    apply(cluster, model_adapter("wrong-digest", namespace, intact, "sha256:" + "0" * 64))
    failed = wait_for(
        "Ready=False", condition_is(cluster, namespace, "wrong-digest", "Ready", "False", kind="ftadapter")
    )
    assert failed["reason"] == "DigestMismatch"


@pytest.fixture
def publishing(start_operator, namespace, cluster, tmp_path):
    """An operator with its progress endpoint, as trainer pods reach it."""
    port = free_port()
    start_operator(
        f"--progress-port={port}", f"--progress-url=https://127.0.0.1:{port}", f"--operator-namespace={namespace}"
    )
    secret = wait_for("the progress CA", lambda: get(cluster, "secret", namespace, "finetune-operator-progress-ca"))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return Endpoint(f"https://127.0.0.1:{port}", "", str(ca_file))


def training(cluster, namespace: str, name: str, bucket: str) -> tuple[dict, TrainerConfig]:
    manifest = valid_job(name)
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["model"] = {"uri": "hf://example/tiny-llama", "revision": "main"}
    manifest["spec"]["method"] = {"type": "lora", "lora": {"rank": 16, "alpha": 32, "targetModules": ["all-linear"]}}
    manifest["spec"]["output"] = {"uri": f"s3://{bucket}/", "credentialsSecretRef": {"name": "s3-creds"}}
    manifest["spec"]["adapter"] = {"name": f"{name}-adapter", "labels": {"team": "a"}}
    manifest["spec"]["template"] = {"podAnnotations": {"test.finetune.dev/run-duration": "1h"}}
    apply(cluster, manifest)
    config_map = wait_for("the ConfigMap", lambda: get(cluster, "configmap", namespace, f"{name}-config"))
    config = TrainerConfig.model_validate_json(config_map["data"]["config.json"])
    pod = wait_for(
        "a running pod",
        lambda: [
            p
            for p in items(cluster, "pods", namespace, f"finetune.dev/job={name}")
            if p["status"].get("phase") == "Running"
        ],
    )[0]
    return pod, config


def evaluation(gate: str) -> dict:
    return {
        "task": {"baseLoss": 2.0, "adapterLoss": 1.2, "samples": 32},
        "general": {"baseLoss": 2.5, "adapterLoss": 2.52 if gate == "Passed" else 3.5, "samples": 32},
        "gate": gate,
        "message": "task loss 2.0000 -> 1.2000 (-40.0%); general loss ...",
    }


def test_a_succeeded_job_publishes_a_ready_adapter_that_outlives_the_job(
    cluster, namespace, publishing, api_client, minio, bucket, adapter_dir
):
    pod, config = training(cluster, namespace, "support-bot", bucket)
    bucket_prefix = config.output.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/")
    uri = upload(minio, adapter_dir, bucket, bucket_prefix)
    final = {
        "stage": "done",
        "step": 40,
        "totalSteps": 40,
        "evaluation": evaluation("Passed"),
        "modelRevision": "0123456789abcdef0123456789abcdef01234567",
        "artifact": {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000},
    }
    assert publishing.post(namespace, "support-bot", final, token_for(api_client, namespace, pod))[0] == 204
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)

    published = wait_for("Published", condition_is(cluster, namespace, "support-bot", "Published"), timeout=60)
    assert "support-bot-adapter" in published["message"]
    ftj = get(cluster, "ftj", namespace, "support-bot")
    assert ftj["status"]["adapter"] == {
        "name": "support-bot-adapter",
        "uri": uri,
        "digest": manifest_digest(adapter_dir),
    }
    assert condition(ftj, "Evaluated")["reason"] == "GatePassed"

    wait_for("Ready", condition_is(cluster, namespace, "support-bot-adapter", "Ready", kind="ftadapter"), timeout=60)
    adapter = get(cluster, "ftadapter", namespace, "support-bot-adapter")
    assert adapter["metadata"]["labels"]["finetune.dev/job"] == "support-bot"
    assert adapter["metadata"]["labels"]["team"] == "a"
    assert not adapter["metadata"].get("ownerReferences"), "a published adapter must outlive its job"
    spec = adapter["spec"]
    assert spec["baseModel"] == {
        "uri": "hf://example/tiny-llama",
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "servedName": "tiny-llama",
    }
    assert spec["lora"] == {"rank": 16, "alpha": 32, "targetModules": ["q_proj", "v_proj"]}
    assert spec["artifact"] == {
        "uri": uri,
        "digest": manifest_digest(adapter_dir),
        "credentialsSecretRef": {"name": "s3-creds"},
    }
    assert spec["source"] == {"fineTuneJob": "support-bot", "uid": ftj["metadata"]["uid"]}
    assert spec["evaluation"]["gate"] == "Passed"
    row = cluster.run_kubectl("get", "ftj", "support-bot", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "Succeeded" and "support-bot-adapter" in row

    cluster.run_kubectl("delete", "ftj", "support-bot", "-n", namespace)
    wait_for("the job's Job to go", lambda: get(cluster, "job", namespace, "support-bot") is None, timeout=60)
    assert get(cluster, "ftadapter", namespace, "support-bot-adapter")["status"]["phase"] == "Ready"


def test_a_failed_gate_fails_the_job_and_publishes_nothing(cluster, namespace, publishing, api_client, bucket):
    pod, _ = training(cluster, namespace, "forgetful", bucket)
    report = {"stage": "evaluating", "step": 40, "evaluation": evaluation("Failed")}
    assert publishing.post(namespace, "forgetful", report, token_for(api_client, namespace, pod))[0] == 204
    patch_pod_status(
        cluster,
        namespace,
        pod["metadata"]["name"],
        "Failed",
        79,
        "evaluation gate failed: general loss 2.5000 -> 3.5000 (+40.0%; allowed increase 5.0%) FAILED",
    )

    failed = wait_for("Failed", condition_is(cluster, namespace, "forgetful", "Failed"), timeout=60)
    assert failed["reason"] == "GateFailed"
    assert "general loss 2.5000 -> 3.5000" in failed["message"]
    ftj = get(cluster, "ftj", namespace, "forgetful")
    assert condition(ftj, "Evaluated")["status"] == "False"
    assert items(cluster, "modeladapters.finetune.dev", namespace) == []


def test_a_job_whose_report_was_not_pushed_publishes_from_the_report_next_to_its_checkpoints(
    cluster, namespace, operator, minio, bucket, adapter_dir, tmp_path
):
    pod, config = training(cluster, namespace, "quiet", bucket)
    uri = upload(minio, adapter_dir, bucket, config.output.artifact_uri.removeprefix(f"s3://{bucket}/").rstrip("/"))
    report = {
        "job": {"namespace": namespace, "name": "quiet"},
        "configSha256": "0" * 64,
        "evaluation": evaluation("Passed"),
        "artifact": {"uri": uri, "digest": manifest_digest(adapter_dir), "sizeBytes": 1000},
    }
    checkpoints = config.output.checkpoints_uri.removeprefix(f"s3://{bucket}/")
    minio.client().put_object(Bucket=bucket, Key=f"{checkpoints}{REPORT_FILE_NAME}", Body=json.dumps(report).encode())
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)

    wait_for("Published", condition_is(cluster, namespace, "quiet", "Published"), timeout=60)
    wait_for("Ready", condition_is(cluster, namespace, "quiet-adapter", "Ready", kind="ftadapter"), timeout=60)


def test_a_job_with_no_artifact_at_all_says_so(cluster, namespace, operator, bucket):
    pod, _ = training(cluster, namespace, "empty-handed", bucket)
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)
    unpublished = wait_for(
        "Published=False", condition_is(cluster, namespace, "empty-handed", "Published", "False"), timeout=60
    )
    assert unpublished["reason"] == "ArtifactUnknown"
    assert condition(get(cluster, "ftj", namespace, "empty-handed"), "Succeeded")["status"] == "True"


# -- results believed only from what the operator owns ---------------------------------------------


def forge_pod(cluster, namespace: str, genuine: dict, message: str) -> None:
    """A tenant's pod dressed as the job's: the labels the operator lists training pods by, the node, the
    container name, and a final status with a termination message, written through the status
    subresource as a kubelet would. Not the Job controller's selector label: a pod carrying that is
    adopted by the Job controller and is then the Job's own for Kubernetes too (docs/security.md)."""
    labels = {k: v for k, v in genuine["metadata"]["labels"].items() if not k.endswith("controller-uid")}
    forged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{genuine['metadata']['name']}-forged", "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": genuine["spec"]["nodeName"],
            "containers": [{"name": "trainer", "image": "trainer"}],
            "tolerations": genuine["spec"].get("tolerations") or [],
        },
    }
    cluster.run_kubectl("create", "-f", "-", input=json.dumps(forged))
    name = forged["metadata"]["name"]
    wait_for("the forged pod to run", lambda: get(cluster, "pod", namespace, name)["status"].get("phase") == "Running")
    patch_pod_status(cluster, namespace, name, "Succeeded", 0, message)


def test_a_forged_pods_termination_message_publishes_nothing(cluster, namespace, operator, bucket):
    pod, _ = training(cluster, namespace, "forged", bucket)
    tenant_artifact = {"uri": f"s3://{bucket}/tenant/elsewhere/v1/", "digest": "sha256:" + "e" * 64, "sizeBytes": 1}
    summary = FinalSummary.model_validate({"artifact": tenant_artifact, "evaluation": evaluation("Passed")})
    forge_pod(cluster, namespace, pod, summary.to_message())
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)

    unpublished = wait_for(
        "Published=False", condition_is(cluster, namespace, "forged", "Published", "False"), timeout=60
    )
    assert unpublished["reason"] == "ArtifactUnknown"
    status = get(cluster, "ftj", namespace, "forged")["status"]
    assert "artifact" not in status and "evaluation" not in status and "adapter" not in status
    assert items(cluster, "modeladapters.finetune.dev", namespace) == []


def test_a_pre_created_adapter_with_the_jobs_uid_and_another_artifact_is_not_taken_over(
    cluster, namespace, publishing, api_client, bucket
):
    pod, config = training(cluster, namespace, "coveted", bucket)
    uid = get(cluster, "ftj", namespace, "coveted")["metadata"]["uid"]
    decoy = model_adapter(
        "coveted-adapter",
        namespace,
        f"s3://{bucket}/tenant/decoy/v1/",
        "sha256:" + "e" * 64,
        source={"fineTuneJob": "coveted", "uid": uid},
    )
    apply(cluster, decoy)
    digest = "sha256:" + "a" * 64
    final = {
        "stage": "done",
        "step": 40,
        "evaluation": evaluation("Passed"),
        "artifact": {"uri": config.output.artifact_uri, "digest": digest, "sizeBytes": 1000},
    }
    assert publishing.post(namespace, "coveted", final, token_for(api_client, namespace, pod))[0] == 204
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)

    taken = wait_for("Published=False", condition_is(cluster, namespace, "coveted", "Published", "False"), timeout=60)
    assert taken["reason"] == "AdapterNameTaken" and "coveted-adapter" in taken["message"]
    ftj = get(cluster, "ftj", namespace, "coveted")
    assert "adapter" not in ftj["status"] and ftj["status"]["artifact"]["digest"] == digest
    assert condition(ftj, "Evaluated")["reason"] == "GatePassed"
    assert get(cluster, "ftadapter", namespace, "coveted-adapter")["spec"]["artifact"]["uri"].endswith("/decoy/v1/")


def test_a_pushed_verdict_without_numbers_publishes_nothing_and_says_the_numbers_are_missing(
    cluster, namespace, publishing, api_client, bucket
):
    pod, config = training(cluster, namespace, "say-so", bucket)
    artifact = {"uri": config.output.artifact_uri, "digest": "sha256:" + "a" * 64, "sizeBytes": 1000}
    final = {"stage": "done", "step": 40, "evaluation": {"gate": "Passed", "message": "trust me"}, "artifact": artifact}
    assert publishing.post(namespace, "say-so", final, token_for(api_client, namespace, pod))[0] == 204
    assert get(cluster, "ftj", namespace, "say-so")["status"]["evaluation"]["gate"] == "Failed"
    patch_pod_status(cluster, namespace, pod["metadata"]["name"], "Succeeded", 0)

    refused = wait_for("Published=False", condition_is(cluster, namespace, "say-so", "Published", "False"), timeout=60)
    assert refused["reason"] == "GateFailed"
    evaluated = condition(get(cluster, "ftj", namespace, "say-so"), "Evaluated")
    assert evaluated["status"] == "False" and "task loss not measured" in evaluated["message"]
    assert "trust me" not in evaluated["message"]
    assert items(cluster, "modeladapters.finetune.dev", namespace) == []


# -- artifacts on a PersistentVolumeClaim: verified by a pod that mounts it -----------------------


@pytest.fixture
def claim_dir(cluster, namespace, tmp_path, request) -> Path:
    """The directory of the claim "adapters", on a local volume."""
    directory = tmp_path / "adapters-volume"
    directory.mkdir()
    claim_on_local_volume(cluster, namespace, "adapters", directory, request)
    return directory


@pytest.fixture
def volume_operator(start_operator, local_node):
    """The operator with its verification pods placed on the local node, whose pods really run."""
    from hack.nodeagent import NODE_LABEL

    return start_operator(
        f"--verifier-node-selector={NODE_LABEL}=true", f"--verifier-tolerations={NODE_LABEL}=true:NoSchedule"
    )


def on_volume(name: str, namespace: str, path: str, digest: str | None = None) -> dict:
    manifest = model_adapter(name, namespace, f"pvc://adapters/{path}/", digest)
    del manifest["spec"]["artifact"]["credentialsSecretRef"]
    return manifest


def verdict(cluster, namespace: str, name: str):
    """The Ready condition once the verification pod has spoken (Ready=False/Verifying is not a verdict)."""
    waiting = condition_is(cluster, namespace, name, "Ready", "False", kind="ftadapter")

    def probe():
        found = waiting()
        return found if found and found["reason"] != "Verifying" else None

    return probe


def copy_adapter(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("namespace", [{"pod-security.kubernetes.io/enforce": "restricted"}], indirect=True)
def test_adapters_on_a_volume_are_verified_by_a_pod_that_mounts_the_claim(
    cluster, namespace, volume_operator, claim_dir, adapter_dir, local_node
):
    copy_adapter(adapter_dir, claim_dir / "team-a" / "sql-helper" / "v1")
    dora = copy_adapter(adapter_dir, claim_dir / "team-a" / "dora" / "v1")
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    write_manifest(dora)
    apply(cluster, on_volume("sql-helper", namespace, "team-a/sql-helper/v1", manifest_digest(adapter_dir)))
    apply(cluster, on_volume("dora", namespace, "team-a/dora/v1"))
    apply(cluster, on_volume("missing", namespace, "team-a/missing/v1"))

    ready = wait_for("Ready", condition_is(cluster, namespace, "sql-helper", "Ready", kind="ftadapter"), timeout=90)
    assert ready["reason"] == "Verified" and "files verified against" in ready["message"]
    status = get(cluster, "ftadapter", namespace, "sql-helper")["status"]
    assert status["digest"] == manifest_digest(adapter_dir) and status["requiredMaxLoraRank"] == 16
    assert status["targetModules"] == ["q_proj", "v_proj"]
    # The check ran in a pod on the node, admitted under the restricted Pod Security level.
    (verifier,) = items(cluster, "pods", namespace, "finetune.dev/model-adapter=sql-helper")
    assert verifier["spec"]["nodeName"] == local_node.node_name and verifier["status"]["phase"] == "Succeeded"

    not_servable = wait_for("the verdict", verdict(cluster, namespace, "dora"), timeout=90)
    assert not_servable["reason"] == "NotServable" and "DoRA" in not_servable["message"]
    missing = wait_for("the verdict", verdict(cluster, namespace, "missing"), timeout=90)
    assert missing["reason"] == "ArtifactNotFound" and "pvc://adapters/team-a/missing/v1/" in missing["message"]
    assert get(cluster, "ftadapter", namespace, "missing")["status"]["phase"] == "Failed"


def test_a_verification_pod_that_cannot_run_fails_the_adapter_with_the_jobs_reason(
    cluster, namespace, operator, claim_dir
):
    """Without a placement for them, verification pods land on a kwok node, which runs nothing."""
    apply(cluster, on_volume("unplaced", namespace, "team-a/unplaced/v1", "sha256:" + "ab" * 32))
    elsewhere = on_volume("elsewhere", namespace, "x/v1")
    elsewhere["spec"]["artifact"]["uri"] = "pvc://no-such-claim/x/v1/"
    apply(cluster, elsewhere)
    pending = wait_for(
        "Verifying", condition_is(cluster, namespace, "unplaced", "Ready", "False", kind="ftadapter"), timeout=30
    )
    # Verifying while the pod runs (kwok may end it before we look: then the verdict below is already there).
    assert pending["reason"] in ("Verifying", "VerificationFailed") and "unplaced-verify-1" in pending["message"]
    job = wait_for("the verification Job", lambda: get(cluster, "job", namespace, "unplaced-verify-1"))
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelAdapter"
    # kwok's pods complete without a termination message: that is no verification.
    failed = wait_for(
        "VerificationFailed",
        lambda: (
            (c := condition(get(cluster, "ftadapter", namespace, "unplaced"), "Ready"))
            and c["reason"] == "VerificationFailed"
            and c
        ),
        timeout=90,
    )
    assert "unplaced-verify-1" in failed["message"]
    no_claim = wait_for(
        "ClaimNotFound", condition_is(cluster, namespace, "elsewhere", "Ready", "False", kind="ftadapter")
    )
    assert no_claim["reason"] == "ClaimNotFound" and "no-such-claim" in no_claim["message"]
    assert get(cluster, "job", namespace, "elsewhere-verify-1") is None
