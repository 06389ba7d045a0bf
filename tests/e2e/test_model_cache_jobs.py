"""The shared model cache for real: the operator creates the namespace's claim, the local node agent runs the
preflight and training pods (the trainer's code on this machine's CPU) against MinIO, the claim bound to a
local directory the test can look into."""

from __future__ import annotations

import hashlib
import json

import pytest
from finetune_operator.render.shared_cache import CACHE_CLAIM, CACHE_LABEL
from kubehelpers import Hopeless, apply, condition, get, items, unless_failed, wait_for
from test_real_training import DATA, base_model, quickstart, stores  # noqa: F401 - fixtures

from hack.localcluster import free_port

pytestmark = [pytest.mark.s3, pytest.mark.trainer]


@pytest.fixture
def cache_directory(cluster, namespace, tmp_path, request):
    """A PersistentVolume at a local directory, reserved for the namespace's cache claim (which the operator
    creates: storage class "", so the controller-manager binds the two)."""
    from hack.nodeagent import host_path_volume

    directory = tmp_path / "model-cache"
    volume = host_path_volume(f"{namespace}-model-cache", directory, namespace, CACHE_CLAIM)
    cluster.run_kubectl("create", "-f", "-", input=json.dumps(volume))
    request.addfinalizer(lambda: cluster.run_kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false"))
    return directory


@pytest.fixture
def caching_operator(start_operator, namespace):
    port = free_port()
    return start_operator(
        "--preflight=true",
        "--cache=true",
        "--cache-storage-class=",
        "--cache-size=1Gi",  # the volume above has 10Gi
        "--cache-max-bytes=805306368",  # 768Mi: below the claim, as the operator requires
        f"--progress-port={port}",
        f"--progress-url=https://127.0.0.1:{port}",
        f"--operator-namespace={namespace}",
    )


def _plan(cluster, namespace: str, name: str) -> dict | None:
    plan = (unless_failed(cluster, namespace, name).get("status") or {}).get("plan") or {}
    if plan and plan.get("cache") is None:
        raise Hopeless(f"planned without the cache: {plan}")
    return plan or None


def _submit(cluster, namespace: str, stores: dict, name: str, *, suspend: bool) -> None:  # noqa: F811
    manifest = quickstart(namespace, stores, maxSteps=3)
    manifest["metadata"]["name"] = name
    manifest["spec"]["adapter"]["name"] = name
    manifest["spec"]["suspend"] = suspend
    apply(cluster, manifest)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jobs_of_one_model_download_it_once_their_data_is_tokenized_once_and_a_corrupted_entry_is_refilled(
    cluster,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 - the fixture imported above
    base_model,  # noqa: F811 - the fixture imported above
    cache_directory,
    caching_operator,
):
    # The first job fills the cache in its preflight and trains reading the model from it (read-only).
    _submit(cluster, namespace, stores, "first", suspend=False)
    first = wait_for("the first plan", lambda: _plan(cluster, namespace, "first"), timeout=300, interval=1.0)
    assert first["cache"]["misses"] == 1 and first["cache"].get("hits", 0) == 0 and first["cache"]["bytes"] > 0
    claim = get(cluster, "pvc", namespace, CACHE_CLAIM)
    assert claim["metadata"]["labels"][CACHE_LABEL] == "true" and claim["spec"]["accessModes"] == ["ReadWriteMany"]

    def trained():
        succeeded = condition(unless_failed(cluster, namespace, "first"), "Succeeded")
        return succeeded if succeeded and succeeded["status"] == "True" else None

    wait_for("the first job to train", trained, timeout=600, interval=1.0)
    (pod,) = items(cluster, "pod", namespace, "finetune.dev/job=first,!finetune.dev/role")
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "shared-model-cache"]
    assert mount["readOnly"] is True
    training_log = local_node.log_path(namespace, pod["metadata"]["name"], "trainer").read_text()
    assert '"model_from_shared_cache"' in training_log
    # Its data too: the preflight tokenized it into the cache, and training tokenized nothing.
    assert '"token_store_from_shared_cache"' in training_log and '"token_store_built"' not in training_log
    assert list(cache_directory.glob("entries/*/files/store/ids.bin"))

    # The second job of the same model (a dry run: its preflight is what fills or reads the cache) downloads nothing.
    _submit(cluster, namespace, stores, "second", suspend=True)
    second = wait_for("the second plan", lambda: _plan(cluster, namespace, "second"), timeout=300, interval=1.0)
    assert second["cache"]["hits"] == 1 and second["cache"].get("misses", 0) == 0
    assert second["cache"].get("bytes", 0) == 0

    # A corrupted entry (same size, other bytes: only the sha256 tells) is detected and downloaded again.
    (weights,) = cache_directory.glob("entries/*/files/model.safetensors")
    weights.write_bytes(b"\0" * weights.stat().st_size)
    _submit(cluster, namespace, stores, "third", suspend=True)
    third = wait_for("the third plan", lambda: _plan(cluster, namespace, "third"), timeout=300, interval=1.0)
    assert third["cache"]["refills"] == 1 and third["cache"]["misses"] == 1
    (weights,) = cache_directory.glob("entries/*/files/model.safetensors")
    assert _sha256(weights) == _sha256(base_model / "model.safetensors")
    print("cache counts per job:", {"first": first["cache"], "second": second["cache"], "third": third["cache"]})
