"""ModelAdapters on a PersistentVolumeClaim, verified by a real pod that mounts the claim (the local node agent
runs it). Verification and publishing from S3 are the in-process tier's (tests/inprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from adapter_artifacts import adapter_dir, manifest_digest, model_adapter, write_manifest  # noqa: F401 - a fixture
from kubehelpers import apply, claim_on_local_volume, condition_is, get, items, wait_for

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
    return model_adapter(name, namespace, f"pvc://adapters/{path}/", digest, keys_in=None)


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
    cluster,
    namespace,
    volume_operator,
    claim_dir,
    adapter_dir,  # noqa: F811 - the fixture
    local_node,
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
