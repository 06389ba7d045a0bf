"""What a tenant's store can make the operator process do: read a bounded amount, whatever the store claims, and
stay under its memory limit (issue 15, finding 1). Real operator process, real MinIO, a real TCP relay. The
time bound, the endpoint allowlist, the tenant's own keys and file:// are the in-process tier's
(tests/inprocess/test_verify_storage_bounds.py)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from adapter_artifacts import model_adapter
from finetune_core.api import MANIFEST_FILE_NAME, ManifestEntry, build_manifest
from kubehelpers import apply, condition_is, wait_for
from storage_servers import Relay

pytestmark = pytest.mark.s3

GIB = 1 << 30
MEMORY_LIMIT_BYTES = 512 << 20  # the chart's resources.limits.memory


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


def create_secret(cluster, namespace: str, name: str, values: dict[str, str]) -> None:
    args = [f"--from-literal={key}={value}" for key, value in values.items()]
    cluster.run_kubectl("create", "secret", "generic", name, "-n", namespace, *args)


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
