"""Kueue preempts a job that trains for real, and the job resumes exactly: the local node agent runs the
trainer on this machine's CPU; a higher-priority job (on a simulated node) takes the ClusterQueue's
quota; Kueue suspends the low one's Job, the trainer gets SIGTERM, checkpoints and exits 75; when the
quota frees, Kueue admits it again and it resumes from that checkpoint. Its adapter's weights are
bitwise those of the same job run without interruption."""

from __future__ import annotations

import hashlib
import time

import pytest
from kubehelpers import apply, condition, condition_is, get, wait_for
from test_kueue import PRIORITY_LABEL, QUEUE_LABEL, local_queue, priority_class
from test_operator_core import training_job
from test_real_training import base_model, quickstart, stores, trainer_operator  # noqa: F401 (fixtures)

from hack.localcluster.kueue import API

pytestmark = [pytest.mark.s3, pytest.mark.trainer]

RESOURCES = {"gpusPerNode": 0, "cpu": "1", "memory": "2Gi"}


def cpu_queue(cluster, namespace: str, request) -> None:
    """A ClusterQueue of one CPU over a flavor without node labels: the pods' own selectors place them."""
    flavor = f"{namespace}-any"[:63]
    quotas = {"cpu": "1", "memory": "100Gi"}
    queue = {
        "apiVersion": API,
        "kind": "ClusterQueue",
        "metadata": {"name": namespace},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": list(quotas),
                    "flavors": [
                        {"name": flavor, "resources": [{"name": k, "nominalQuota": v} for k, v in quotas.items()]}
                    ],
                }
            ],
        },
    }
    apply(cluster, {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": flavor}})
    apply(cluster, queue)
    apply(cluster, local_queue(namespace, namespace))
    apply(cluster, priority_class(f"{namespace}-low", 100))
    apply(cluster, priority_class(f"{namespace}-high", 1000))
    request.addfinalizer(
        lambda: cluster.run_kubectl(
            "delete",
            "clusterqueue,resourceflavor,workloadpriorityclass",
            namespace,
            flavor,
            f"{namespace}-low",
            f"{namespace}-high",
            "--wait=false",
            check=False,
        )
    )


def adapter_weights(minio, bucket: str, uri: str) -> str:
    key = uri.removeprefix(f"s3://{bucket}/").rstrip("/") + "/adapter_model.safetensors"
    return hashlib.sha256(minio.client().get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def progress_step(cluster, namespace: str, name: str) -> int:
    return ((get(cluster, "ftj", namespace, name) or {}).get("status") or {}).get("progress", {}).get("step", 0)


def test_a_preempted_training_job_resumes_from_its_checkpoint_to_the_same_adapter(
    cluster,
    kueue,
    namespace,
    local_node,
    minio,
    stores,  # noqa: F811 (the fixture)
    trainer_operator,  # noqa: F811 (the fixture)
    request,
):
    cpu_queue(cluster, namespace, request)
    manifests = {}
    for name in ("preempted", "straight"):
        manifest = quickstart(namespace, stores, maxSteps=40, checkpointEverySteps=10, batchTokens=1024)
        manifest["metadata"]["name"] = name
        manifest["spec"]["adapter"]["name"] = f"{name}-v1"
        manifest["spec"]["resources"] = dict(RESOURCES)
        manifests[name] = manifest
    manifests["preempted"]["metadata"]["labels"] = {QUEUE_LABEL: "gpu-queue", PRIORITY_LABEL: f"{namespace}-low"}
    apply(cluster, manifests["preempted"])
    wait_for("training past step 10", lambda: 10 <= progress_step(cluster, namespace, "preempted") < 35, 600, 0.5)

    high = training_job("urgent", namespace, run="3s")
    high["spec"]["resources"] = dict(RESOURCES)
    high["metadata"]["labels"] = {QUEUE_LABEL: "gpu-queue", PRIORITY_LABEL: f"{namespace}-high"}
    apply(cluster, high)
    preempted = wait_for("Preempted", condition_is(cluster, namespace, "preempted", "Preempted"), timeout=120)
    evicted_at, step_at_eviction = time.monotonic(), progress_step(cluster, namespace, "preempted")
    assert preempted["reason"] == "InClusterQueue"

    wait_for("urgent to succeed", condition_is(cluster, namespace, "urgent", "Succeeded"), timeout=120)
    wait_for("re-admission", condition_is(cluster, namespace, "preempted", "Preempted", "False"), timeout=120)
    wait_for("training again", lambda: progress_step(cluster, namespace, "preempted") > step_at_eviction, 600, 0.5)
    print(f"preempted at step {step_at_eviction}: training again {time.monotonic() - evicted_at:.1f}s after eviction")
    wait_for("Published", condition_is(cluster, namespace, "preempted", "Published"), timeout=600, interval=0.5)
    status = get(cluster, "ftj", namespace, "preempted")["status"]
    assert status["resumedFromStep"] >= 10, status
    # Published means its training Job ended: Kueue released the quota, and status.queue says Finished.
    assert status["queue"]["preemptions"] == 1 and status["queue"]["state"] == "Finished"

    apply(cluster, manifests["straight"])
    wait_for("Published", condition_is(cluster, namespace, "straight", "Published"), timeout=600, interval=0.5)
    straight = get(cluster, "ftj", namespace, "straight")
    assert not straight["status"].get("resumedFromStep") and condition(straight, "Succeeded")["status"] == "True"
    assert adapter_weights(minio, stores["adapters"], status["adapter"]["uri"]) == adapter_weights(
        minio, stores["adapters"], straight["status"]["adapter"]["uri"]
    )
