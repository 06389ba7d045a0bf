"""FineTuneJobs queued, admitted, preempted and resumed by a real Kueue (v0.17, built from Go modules).

Each test gets its own ClusterQueue (named after its namespace, open to that namespace only) with a
LocalQueue `gpu-queue` in its namespace, over a ResourceFlavor of the simulated H100 nodes. kwok plays
the GPU nodes: a pod runs for the duration its annotation says. What differs from a production install
of Kueue: hack/localcluster/kueue.py.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from kubehelpers import apply, condition, condition_is, get, items, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_operator_core import training_job

from hack.localcluster import free_port
from hack.localcluster.kueue import API

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
FLAVOR = "h100"


def gpu_flavor() -> dict:
    return {
        "apiVersion": API,
        "kind": "ResourceFlavor",
        "metadata": {"name": FLAVOR},
        "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}},
    }


def cluster_queue(name: str, namespace: str, gpus: int) -> dict:
    quotas = {"cpu": "1000", "memory": "100Ti", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": API,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": list(quotas),
                    "flavors": [
                        {
                            "name": FLAVOR,
                            "resources": [{"name": name, "nominalQuota": quota} for name, quota in quotas.items()],
                        }
                    ],
                }
            ],
        },
    }


def local_queue(namespace: str, cluster_queue_name: str, name: str = "gpu-queue") -> dict:
    return {
        "apiVersion": API,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def priority_class(name: str, value: int) -> dict:
    return {"apiVersion": API, "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": value}


@pytest.fixture
def gpu_queue(cluster, kueue, namespace, request):
    """A ClusterQueue of 8 GPUs for this test's namespace and the LocalQueue gpu-queue feeding it."""
    name = namespace
    for manifest in (gpu_flavor(), cluster_queue(name, namespace, gpus=8), local_queue(namespace, name)):
        apply(cluster, manifest)
    request.addfinalizer(lambda: cluster.run_kubectl("delete", "clusterqueue", name, "--wait=false", check=False))
    wait_for(
        "the ClusterQueue to be active",
        lambda: (condition(get(cluster, "clusterqueue", "", name), "Active") or {}).get("status") == "True",
    )
    return name


def queued_job(name: str, namespace: str, gpus: int = 4, priority: str | None = None, run: str = "1h") -> dict:
    manifest = training_job(name, namespace, run=run)
    manifest["spec"]["resources"] = {"gpusPerNode": gpus, "cpu": "8", "memory": "32Gi"}
    manifest["metadata"]["labels"] = {QUEUE_LABEL: "gpu-queue"}
    if priority:
        manifest["metadata"]["labels"][PRIORITY_LABEL] = priority
    return manifest


def queue_of(cluster, namespace: str, name: str) -> dict:
    return (get(cluster, "ftj", namespace, name) or {}).get("status", {}).get("queue") or {}


def test_two_of_three_jobs_fit_the_quota_and_the_third_waits_saying_why(cluster, namespace, gpu_queue, operator):
    for name in ("first", "second"):
        apply(cluster, queued_job(name, namespace))
        wait_for(f"{name} to run", condition_is(cluster, namespace, name, "Running"), timeout=90)
    apply(cluster, queued_job("third", namespace))

    admitted = wait_for(
        "third to be reported waiting for quota",
        lambda: (
            (c := condition(get(cluster, "ftj", namespace, "third"), "Admitted"))
            and "insufficient" in c["message"]
            and c
        ),
    )
    assert admitted["status"] == "False" and admitted["reason"] == "Pending", admitted
    assert "insufficient unused quota for nvidia.com/gpu" in admitted["message"], admitted
    assert queue_of(cluster, namespace, "third") == {
        "state": "Queued",
        "localQueue": "gpu-queue",
        "clusterQueue": gpu_queue,
        "preemptions": 0,
    }, get(cluster, "ftj", namespace, "third")["status"]
    third = get(cluster, "ftj", namespace, "third")
    assert third["status"]["phase"] == "Suspended"
    assert condition(third, "Suspended")["reason"] == "QueuedByKueue"
    assert get(cluster, "job", namespace, "third")["spec"]["suspend"] is True
    for name in ("first", "second"):
        queue = queue_of(cluster, namespace, name)
        assert queue["state"] == "Admitted" and queue["clusterQueue"] == gpu_queue and queue["admissionTime"]
    listed = cluster.run_kubectl("get", "ftj", "-n", namespace).stdout
    print(listed)  # shown with -s: the README's example
    assert [line.split()[2] for line in listed.splitlines()[1:]] == ["Admitted", "Admitted", "Queued"], listed


def test_a_queue_name_without_a_local_queue_in_the_namespace_is_reported(cluster, kueue, namespace, operator):
    manifest = queued_job("lost", namespace)
    manifest["metadata"]["labels"][QUEUE_LABEL] = "other-tenants-queue"
    apply(cluster, manifest)

    admitted = wait_for("Inadmissible", condition_is(cluster, namespace, "lost", "Admitted", "False"), timeout=60)
    admitted = wait_for(
        "Kueue's verdict",
        lambda: (
            (c := condition(get(cluster, "ftj", namespace, "lost"), "Admitted")) and c["reason"] == "Inadmissible" and c
        ),
        timeout=60,
    )
    assert "LocalQueue other-tenants-queue doesn't exist" in admitted["message"]
    assert "create that LocalQueue in this namespace" in admitted["message"]
    assert queue_of(cluster, namespace, "lost")["state"] == "Inadmissible"
    assert get(cluster, "job", namespace, "lost")["spec"]["suspend"] is True
    assert not items(cluster, "pods", namespace, "finetune.dev/job=lost")


def test_a_high_priority_job_preempts_a_running_low_priority_one_which_resumes_later(
    cluster, namespace, gpu_queue, operator
):
    apply(cluster, priority_class(f"{namespace}-low", 100))
    apply(cluster, priority_class(f"{namespace}-high", 1000))
    apply(cluster, queued_job("low", namespace, gpus=8, priority=f"{namespace}-low"))
    wait_for("low to run", condition_is(cluster, namespace, "low", "Running"), timeout=90)

    apply(cluster, queued_job("high", namespace, gpus=8, priority=f"{namespace}-high", run="3s"))
    preempted = wait_for("low to be preempted", condition_is(cluster, namespace, "low", "Preempted"), timeout=90)
    evicted_at = time.monotonic()
    assert preempted["reason"] == "InClusterQueue", preempted
    low = get(cluster, "ftj", namespace, "low")
    assert low["status"]["queue"]["state"] == "Preempted" and low["status"]["queue"]["preemptions"] == 1
    suspended = wait_for("low to be suspended", condition_is(cluster, namespace, "low", "Suspended"), timeout=60)
    print(cluster.run_kubectl("get", "ftj", "-n", namespace).stdout)  # shown with -s: the README's example
    assert suspended["reason"] == "Preempted" and "evicted by Kueue (Preempted)" in suspended["message"]
    assert get(cluster, "job", namespace, "low")["spec"]["suspend"] is True

    wait_for("high to succeed", condition_is(cluster, namespace, "high", "Succeeded"), timeout=90)
    readmitted = wait_for("low to be re-admitted", condition_is(cluster, namespace, "low", "Preempted", "False"), 90)
    assert readmitted["reason"] == "Readmitted"
    wait_for("low to run again", condition_is(cluster, namespace, "low", "Running"), timeout=90)
    print(f"preempted low: admitted again and running {time.monotonic() - evicted_at:.1f}s after the eviction")
    print(cluster.run_kubectl("get", "ftj", "-n", namespace, "-o", "wide").stdout)
    low = get(cluster, "ftj", namespace, "low")
    assert low["status"]["queue"]["state"] == "Admitted" and low["status"]["queue"]["preemptions"] == 1
    assert len(items(cluster, "jobs", namespace, "finetune.dev/job=low")) == 1


def test_a_two_node_job_that_cannot_place_both_pods_is_evicted_whole(cluster, namespace, kueue, operator, request):
    """waitForPodsReady: quota for 16 GPUs, but the flavor's nodes (one 8-GPU node) hold one pod of two.
    Kueue admits the job, waits for all its pods to be ready, then evicts the whole Job: never half-started."""
    flavor = f"{namespace}-one-node"[:63]
    apply(
        cluster,
        {
            "apiVersion": API,
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {"nodeLabels": {"kubernetes.io/hostname": "gpu-2"}},
        },
    )
    queue = cluster_queue(namespace, namespace, gpus=16)
    queue["spec"]["resourceGroups"][0]["flavors"][0]["name"] = flavor
    apply(cluster, queue)
    apply(cluster, local_queue(namespace, namespace))
    request.addfinalizer(
        lambda: cluster.run_kubectl(
            "delete", "clusterqueue,resourceflavor", namespace, flavor, "--wait=false", check=False
        )
    )
    manifest = queued_job("pair", namespace, gpus=8)
    manifest["spec"]["resources"]["nodes"] = 2
    apply(cluster, manifest)

    wait_for("admission", lambda: queue_of(cluster, namespace, "pair").get("state") == "Admitted", timeout=90)
    wait_for(
        "both pods, one of them unschedulable",
        lambda: len(items(cluster, "pods", namespace, "finetune.dev/job=pair")) == 2,
    )
    evicted = wait_for(
        "eviction after waitForPodsReady's timeout",
        lambda: (
            (c := condition(get(cluster, "ftj", namespace, "pair"), "Admitted"))
            and c["reason"] == "PodsReadyTimeout"
            and c
        ),
        timeout=120,
    )
    assert "evicted by Kueue (PodsReadyTimeout)" in evicted["message"]
    pair = get(cluster, "ftj", namespace, "pair")
    assert pair["status"]["queue"]["state"] == "Evicted" and pair["status"]["phase"] == "Suspended"
    assert get(cluster, "job", namespace, "pair")["spec"]["suspend"] is True
    wait_for("no pod left running", lambda: not items(cluster, "pods", namespace, "finetune.dev/job=pair"), timeout=60)


def test_an_operator_killed_while_kueue_releases_quota_catches_up_without_duplicates(
    cluster, namespace, gpu_queue, start_operator
):
    first = start_operator()
    apply(cluster, queued_job("before", namespace, gpus=8, run="6s"))
    wait_for("before to run", condition_is(cluster, namespace, "before", "Running"), timeout=90)
    apply(cluster, queued_job("after", namespace, gpus=8))
    wait_for("after to be created and queued", lambda: queue_of(cluster, namespace, "after").get("state") == "Queued")
    first.kill()

    # With the operator gone, before finishes and Kueue admits after (it unsuspends after's Job itself).
    wait_for(
        "Kueue to admit after",
        lambda: get(cluster, "job", namespace, "after")["spec"]["suspend"] is False,
        timeout=90,
    )
    start_operator()
    wait_for("before to succeed", condition_is(cluster, namespace, "before", "Succeeded"), timeout=60)
    wait_for("after to run", condition_is(cluster, namespace, "after", "Running"), timeout=60)
    wait_for("after to say admitted", lambda: queue_of(cluster, namespace, "after").get("state") == "Admitted")
    for name in ("before", "after"):
        assert len(items(cluster, "jobs", namespace, f"finetune.dev/job={name}")) == 1
        assert (
            len(items(cluster, "workloads", namespace, f"kueue.x-k8s.io/job-uid={job_uid(cluster, namespace, name)}"))
            == 1
        )


def job_uid(cluster, namespace: str, name: str) -> str:
    return get(cluster, "job", namespace, name)["metadata"]["uid"]


def kueue_requests(metrics_url: str) -> float:
    """The operator's requests for Workloads and LocalQueues so far, from its own request counter."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "finetune_operator_api_requests_total"
        and sample.labels.get("resource") in ("workloads", "localqueues")
    )


def test_an_admitted_running_job_costs_no_kueue_request_resync_after_resync(
    cluster, namespace, gpu_queue, start_operator
):
    """Kueue's next word on an admitted job (an eviction) suspends its Job, whose watch event brings the job
    back: until then its Workload is not read, however often the job is reconciled."""
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    start_operator(f"--metrics-port={metrics_port}", "--metrics-secure=false", "--resync-seconds=1")
    apply(cluster, queued_job("steady", namespace))
    wait_for("steady to run", condition_is(cluster, namespace, "steady", "Running"), timeout=90)
    wait_for("the admission recorded", lambda: queue_of(cluster, namespace, "steady").get("state") == "Admitted")
    time.sleep(2)  # the last status write and its event
    before = kueue_requests(metrics_url)
    assert before > 0  # the counter counts these: it read the Workload while the job waited

    time.sleep(10)  # ten resyncs

    assert kueue_requests(metrics_url) == before
    assert queue_of(cluster, namespace, "steady")["state"] == "Admitted"
    assert condition(get(cluster, "ftj", namespace, "steady"), "Admitted")["status"] == "True"
