"""What a tenant's store can make reconcile_adapter() do: read for a bounded time, at an allowed endpoint, with the
tenant's own keys only, and never the operator's own filesystem (issue 15). Real MinIO, real TCP servers in
front of it; the operator's memory under a huge manifest needs its process and stays e2e."""

from __future__ import annotations

import uuid

import pytest
from adapter_artifacts import model_adapter, upload, write_artifact, write_manifest
from finetune_operator.kube import MODELADAPTERS
from operator_harness import condition
from storage_servers import Listener, Relay

pytestmark = pytest.mark.s3


def secret(harness, name: str, values: dict[str, str]) -> None:
    harness.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values})


def ready(harness, name: str) -> dict:
    return condition(harness.adapter(name), "Ready")


def test_a_slow_store_cannot_hold_a_verification_past_its_deadline(harness, minio, tmp_path):
    directory = tmp_path / "artifact"
    write_artifact(directory)
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * (1 << 20))  # 1024 drips: minutes
    write_manifest(directory)
    bucket = minio.create_bucket(f"slow-{uuid.uuid4().hex[:10]}")
    uri = upload(minio, directory, bucket, "team-a/v1")
    slow = Relay(minio.port, drip=0.1)
    try:
        secret(harness, "s3-creds", {**minio.credentials, "AWS_ENDPOINT_URL": slow.endpoint})
        harness.configure(s3_endpoint=slow.endpoint, verification_timeout_seconds=5)
        harness.create(model_adapter("slow", harness.namespace, uri))

        assert harness.reconcile_adapter("slow").phase == "Failed"
    finally:
        slow.close()

    failed = ready(harness, "slow")
    assert failed["reason"] == "VerificationTimedOut"
    assert failed["message"] == f"{uri}adapter_model.safetensors: still reading after the 5 s allowed for one look"


def test_an_endpoint_outside_the_allowlist_gets_no_request(harness, minio):
    listener = Listener()
    try:
        secret(harness, "elsewhere", {**minio.credentials, "AWS_ENDPOINT_URL": listener.endpoint})
        harness.create(model_adapter("elsewhere", harness.namespace, "s3://adapters/team-a/v1/", keys_in="elsewhere"))

        harness.reconcile_adapter("elsewhere")

        assert listener.connections == 0
    finally:
        listener.close()
    failed = ready(harness, "elsewhere")
    assert failed["reason"] == "EndpointNotAllowed"
    assert listener.endpoint.removeprefix("http://") in failed["message"]
    assert minio.endpoint in failed["message"]  # the allowed one, to fix the Secret with


def test_the_operators_own_keys_never_stand_in_for_a_secrets(harness, minio, tmp_path, monkeypatch):
    bucket = minio.create_bucket(f"ambient-{uuid.uuid4().hex[:10]}")
    write_artifact(tmp_path / "artifact")
    uri = upload(minio, tmp_path / "artifact", bucket, "team-a/v1")
    # The operator's own identity, in its environment: what boto3's default chain would find.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, minio.credentials[key])
    monkeypatch.setenv("AWS_ENDPOINT_URL", minio.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    secret(harness, "no-keys", {"AWS_ENDPOINT_URL": minio.endpoint, "AWS_REGION": "us-east-1"})
    secret(harness, "s3-creds", dict(minio.credentials))
    harness.create(model_adapter("no-keys", harness.namespace, uri, keys_in="no-keys"))
    harness.create(model_adapter("no-secret", harness.namespace, uri, keys_in=None))
    harness.create(model_adapter("with-keys", harness.namespace, uri))  # the same artifact, with a Secret's keys: fine

    assert harness.reconcile_adapter("with-keys").phase == "Ready"
    for name in ("no-keys", "no-secret"):
        assert harness.reconcile_adapter(name).phase == "Failed"
        assert ready(harness, name)["reason"] == "CredentialsMissing", name


def test_a_file_artifact_is_refused_unless_the_operator_runs_in_local_mode(harness, tmp_path):
    digest = write_artifact(tmp_path / "artifact")
    harness.create(model_adapter("local", harness.namespace, f"file://{tmp_path / 'artifact'}/", keys_in=None))

    assert harness.reconcile_adapter("local").phase == "Failed"
    failed = ready(harness, "local")
    assert failed["reason"] == "StorageNotReadable" and "--allow-local-files" in failed["message"]

    harness.configure(allow_local_files=True)
    # A failed adapter is looked at again after a while: as if that while had passed.
    harness.patch(MODELADAPTERS, "local", {"status": {"verifiedAt": "2020-01-01T00:00:00Z"}}, "status")

    assert harness.reconcile_adapter("local").phase == "Ready"
    assert digest in ready(harness, "local")["message"]
