"""What a tenant's store can make the operator do: read a bounded amount, for a bounded time, at an
allowed endpoint, with the tenant's own keys only, and never its own filesystem (issue 15,
findings 1, 3 and 9's file://). Real operator process, real MinIO, real TCP listeners."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from finetune_core.api import MANIFEST_FILE_NAME, ManifestEntry, build_manifest, manifest_of_directory
from kubehelpers import apply, condition_is, get, wait_for

pytestmark = pytest.mark.s3

GIB = 1 << 30
MEMORY_LIMIT_BYTES = 512 << 20  # the chart's resources.limits.memory


class Relay:
    """A TCP relay in front of MinIO that counts what MinIO sends back: what the operator downloaded.
    With ``drip``, it passes MinIO's answers on 1 KiB at a time, ``drip`` seconds apart: a slow server."""

    def __init__(self, target_port: int, drip: float = 0.0):
        self.target_port = target_port
        self.drip = drip
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.received = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 10 if counted and self.drip else 1 << 16):
                if counted and self.drip:
                    time.sleep(self.drip)
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


class Listener:
    """A TCP listener that records every connection made to it (and answers none)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.server.close()


class PeakRss:
    """Samples the resident memory of a process and its children while it runs."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def write_artifact(directory: Path) -> str:
    """A small valid LoRA artifact of a Llama, as the trainer writes one; returns its digest."""
    directory.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": "hf://example/tiny-llama",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "base_model_config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    manifest = manifest_of_directory(directory)
    (directory / MANIFEST_FILE_NAME).write_text(manifest.model_dump_json(by_alias=True))
    return manifest.digest


def upload(client, directory: Path, bucket: str, prefix: str) -> str:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


def create_secret(cluster, namespace: str, name: str, values: dict[str, str]) -> None:
    args = [f"--from-literal={key}={value}" for key, value in values.items()]
    cluster.run_kubectl("create", "secret", "generic", name, "-n", namespace, *args)


def model_adapter(name: str, namespace: str, uri: str, keys_in: str | None = "s3-creds") -> dict:
    artifact: dict = {"uri": uri}
    if keys_in:
        artifact["credentialsSecretRef"] = {"name": keys_in}
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "ModelAdapter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"baseModel": {"uri": "hf://example/tiny-llama"}, "format": "peft-lora", "artifact": artifact},
    }


def failed(cluster, namespace: str, name: str) -> dict:
    return wait_for(
        f"{name} Ready=False", condition_is(cluster, namespace, name, "Ready", "False", kind="ftadapter"), timeout=120
    )


class Zeros:
    """A file-like object of ``size`` zero bytes, read in parts: 1 GiB uploaded without holding it."""

    def __init__(self, size: int):
        self.left = size

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount is None or amount < 0 else min(amount, self.left)
        self.left -= amount
        return b"\0" * amount


@pytest.fixture(scope="module")
def huge_bucket(minio):
    """A bucket whose big/manifest.json is 1 GiB (of zeros), and whose own manifest.json says that
    object has 1 byte."""
    from boto3.s3.transfer import TransferConfig

    bucket = minio.create_bucket(f"huge-{uuid.uuid4().hex[:10]}")
    client = minio.client()
    client.upload_fileobj(
        Zeros(GIB), bucket, "big/manifest.json", Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=2)
    )
    claims_one_byte = build_manifest([ManifestEntry(path="big/manifest.json", size=1, sha256="0" * 64)])
    client.put_object(Bucket=bucket, Key=MANIFEST_FILE_NAME, Body=claims_one_byte.model_dump_json(by_alias=True))
    yield bucket
    for key in ("big/manifest.json", MANIFEST_FILE_NAME):
        client.delete_object(Bucket=bucket, Key=key)


@pytest.fixture
def relay(minio):
    running = Relay(minio.port)
    yield running
    running.close()


def test_a_one_gib_manifest_leaves_the_operator_under_its_memory_limit(
    cluster, namespace, start_operator, minio, huge_bucket, relay, record_property
):
    create_secret(cluster, namespace, "s3-creds", {**minio.credentials, "AWS_ENDPOINT_URL": relay.endpoint})
    operator = start_operator(env={"FINETUNE_S3_ENDPOINT": relay.endpoint})
    rss = PeakRss(operator.process.pid)
    try:
        apply(cluster, model_adapter("huge-manifest", namespace, f"s3://{huge_bucket}/big/"))
        condition = failed(cluster, namespace, "huge-manifest")
    finally:
        peak = rss.stop()
    record_property("operator_peak_rss_mib", round(peak / (1 << 20), 1))
    print(f"\noperator peak RSS while refusing a 1 GiB manifest.json: {peak / (1 << 20):.1f} MiB")
    assert condition["reason"] == "ObjectTooLarge"
    assert condition["message"] == (f"s3://{huge_bucket}/big/manifest.json is {GIB} bytes; at most {1 << 20} are read")
    assert 0 < peak < MEMORY_LIMIT_BYTES
    assert relay.received < 1 << 20, f"the operator downloaded {relay.received} bytes"
    assert operator.process.poll() is None


def test_a_manifest_claiming_one_byte_for_a_large_object_does_not_download_it(
    cluster, namespace, start_operator, minio, huge_bucket, relay
):
    create_secret(cluster, namespace, "s3-creds", {**minio.credentials, "AWS_ENDPOINT_URL": relay.endpoint})
    start_operator(env={"FINETUNE_S3_ENDPOINT": relay.endpoint})
    apply(cluster, model_adapter("one-byte", namespace, f"s3://{huge_bucket}/"))
    condition = failed(cluster, namespace, "one-byte")
    assert condition["reason"] == "FileCorrupt"
    assert condition["message"] == f"big/manifest.json has {GIB} bytes, the manifest says 1"
    assert relay.received < 1 << 20, f"the operator downloaded {relay.received} bytes"


def test_a_slow_store_cannot_hold_a_verification_past_its_deadline(cluster, namespace, start_operator, minio, tmp_path):
    directory = tmp_path / "artifact"
    write_artifact(directory)
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * (1 << 20))  # 1024 drips: minutes
    (directory / MANIFEST_FILE_NAME).write_text(manifest_of_directory(directory).model_dump_json(by_alias=True))
    bucket = minio.create_bucket(f"slow-{uuid.uuid4().hex[:10]}")
    uri = upload(minio.client(), directory, bucket, "team-a/v1")
    slow = Relay(minio.port, drip=0.1)
    try:
        create_secret(cluster, namespace, "s3-creds", {**minio.credentials, "AWS_ENDPOINT_URL": slow.endpoint})
        start_operator("--verification-timeout-seconds=5", env={"FINETUNE_S3_ENDPOINT": slow.endpoint})
        apply(cluster, model_adapter("slow", namespace, uri))
        condition = failed(cluster, namespace, "slow")
    finally:
        slow.close()
    assert condition["reason"] == "VerificationTimedOut"
    assert condition["message"] == f"{uri}adapter_model.safetensors: still reading after the 5 s allowed for one look"


def test_an_endpoint_outside_the_allowlist_gets_no_request(cluster, namespace, operator, minio):
    listener = Listener()
    try:
        create_secret(cluster, namespace, "elsewhere", {**minio.credentials, "AWS_ENDPOINT_URL": listener.endpoint})
        apply(cluster, model_adapter("elsewhere", namespace, "s3://adapters/team-a/v1/", keys_in="elsewhere"))
        condition = failed(cluster, namespace, "elsewhere")
        assert listener.connections == 0  # an allowed endpoint is asked before the condition is written
    finally:
        listener.close()
    assert condition["reason"] == "EndpointNotAllowed"
    assert listener.endpoint.removeprefix("http://") in condition["message"]
    assert minio.endpoint in condition["message"]  # the allowed one, to fix the Secret with


def test_the_operators_own_keys_never_stand_in_for_a_secrets(cluster, namespace, start_operator, minio, tmp_path):
    bucket = minio.create_bucket(f"ambient-{uuid.uuid4().hex[:10]}")
    write_artifact(tmp_path / "artifact")
    uri = upload(minio.client(), tmp_path / "artifact", bucket, "team-a/v1")
    ambient = {key: minio.credentials[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    start_operator(env={**ambient, "AWS_ENDPOINT_URL": minio.endpoint, "AWS_REGION": "us-east-1"})
    create_secret(cluster, namespace, "no-keys", {"AWS_ENDPOINT_URL": minio.endpoint, "AWS_REGION": "us-east-1"})
    create_secret(cluster, namespace, "s3-creds", minio.credentials)

    apply(cluster, model_adapter("no-keys", namespace, uri, keys_in="no-keys"))
    apply(cluster, model_adapter("no-secret", namespace, uri, keys_in=None))
    apply(cluster, model_adapter("with-keys", namespace, uri))  # the same artifact, with a Secret's keys: fine

    wait_for("with-keys Ready", condition_is(cluster, namespace, "with-keys", "Ready", kind="ftadapter"), timeout=120)
    for name in ("no-keys", "no-secret"):
        condition = failed(cluster, namespace, name)
        assert condition["reason"] == "CredentialsMissing", condition
        assert get(cluster, "ftadapter", namespace, name)["status"]["phase"] == "Failed"


def test_a_file_artifact_is_refused_unless_the_operator_runs_in_local_mode(
    cluster, namespace, start_operator, tmp_path
):
    digest = write_artifact(tmp_path / "artifact")
    first = start_operator()
    apply(cluster, model_adapter("local", namespace, f"file://{tmp_path / 'artifact'}/", keys_in=None))
    condition = failed(cluster, namespace, "local")
    assert condition["reason"] == "StorageNotReadable" and "--allow-local-files" in condition["message"]

    first.stop()
    start_operator("--allow-local-files")
    ready = wait_for("local Ready", condition_is(cluster, namespace, "local", "Ready", kind="ftadapter"), timeout=120)
    assert digest in ready["message"]
