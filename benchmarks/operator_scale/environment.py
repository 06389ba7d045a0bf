"""The benchmark's cluster: the project's LocalCluster with an audit log of the operator's requests,
enough simulated GPU nodes for every compared pod at once, the CRDs, the operator's own identity,
and the unrelated pods; and the operator processes run against it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from hack.localcluster import LocalCluster, metadata_audit_policy
from hack.localcluster.cluster import GPUS_PER_NODE
from hack.localcluster.operator_process import OperatorProcess

from .api import Api
from .binding import create_all, wait_until
from .manifests import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    PODS_PER_BULK_NODE,
    bulk_node,
    namespace,
    unrelated_pod,
)

FINETUNEJOBS = "/apis/finetune.dev/v1alpha1/namespaces/{namespace}/finetunejobs"
JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
PODS = "/api/v1/namespaces/{namespace}/pods"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
UNRELATED = "opbench-unrelated"


def gpu_nodes_for(pods: int) -> int:
    """Nodes of 8 GPUs for ``pods`` one-GPU pods bound at once, and one spare."""
    return math.ceil(pods / GPUS_PER_NODE) + 1


def start_cluster(gpu_pods: int) -> tuple[LocalCluster, Api]:
    cluster = LocalCluster(
        gpu_nodes=gpu_nodes_for(gpu_pods), audit_policy=metadata_audit_policy(users=[OPERATOR_USER])
    ).start()
    try:
        cluster.install_crds()
    except BaseException:
        cluster.stop()
        raise
    return cluster, Api.for_cluster(cluster)


def create_namespaces(api: Api, names: list[str]) -> None:
    """Namespaces, each ready for pods (its default ServiceAccount exists, or pod creation is refused)."""
    for name in names:
        api.create("/api/v1/namespaces", namespace(name), exist_ok=True)
    for name in names:
        wait_until(
            f"the default ServiceAccount of {name}",
            lambda name=name: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout=60,
            interval=0.2,
        )


def operator_kubeconfig(cluster: LocalCluster, api: Api) -> Path:
    """A kubeconfig of the operator's own ServiceAccount, so the audit log tells its requests from everyone
    else's. Bound to cluster-admin: the benchmark measures cost, not RBAC (the e2e tests check the chart's
    rules), and a build that needs a new permission (Leases, say) still runs here."""
    create_namespaces(api, [OPERATOR_NAMESPACE])
    return cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


def add_unrelated_pods(api: Api, count: int, timeout: float) -> dict[str, Any]:
    """``count`` ordinary pods of someone else's, Running on simulated CPU nodes; returns how long it took."""
    started = time.monotonic()
    create_namespaces(api, [UNRELATED])
    nodes = [f"bulk-{i}" for i in range(math.ceil(count / PODS_PER_BULK_NODE))]
    create_all(api, "/api/v1/nodes", [bulk_node(name) for name in nodes])
    pods = [unrelated_pod(i, nodes[i // PODS_PER_BULK_NODE]) for i in range(count)]
    create_all(api, PODS.format(namespace=UNRELATED), pods, workers=8)
    created = time.monotonic()
    wait_until(
        f"{count} unrelated pods Running",
        lambda: not pods_not_in_phase(api, UNRELATED, "Running"),
        timeout=timeout,
        interval=2.0,
    )
    return {
        "pods": count,
        "nodes": len(nodes),
        "create_seconds": created - started,
        "running_seconds": time.monotonic() - started,
    }


def pods_not_in_phase(api: Api, namespace: str, *phases: str) -> bool:
    """Whether some pod of ``namespace`` is in none of ``phases`` (one item fetched, however many there are)."""
    selector = ",".join(f"status.phase!={phase}" for phase in phases)
    result = api.get(PODS.format(namespace=namespace), fieldSelector=selector, limit=1) or {}
    return bool(result.get("items"))


def lease_holder(api: Api) -> str | None:
    """The holder of the operator's leader-election Lease; None when there is no such Lease."""
    lease = api.get(LEASE.format(namespace=OPERATOR_NAMESPACE, name="finetune-operator"))
    if lease is None:
        return None
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def operator(
    cluster: LocalCluster, kubeconfig_path: Path, pod_name: str, resync_seconds: float, source: Path
) -> OperatorProcess:
    """The operator whose ``finetune_operator`` package is in ``source``, cluster-wide, with its own defaults:
    unlike the chart's, progress and metrics endpoints off and no preflight Job (kwok's pods report no plan)."""
    # The core it imports is the one beside it (core/ of the same checkout), where there is one.
    core = source.parent / "core"
    python_path = os.pathsep.join(
        filter(None, [str(source), str(core) if core.is_dir() else None, os.environ.get("PYTHONPATH")])
    )
    return OperatorProcess(
        kubeconfig_path,
        cluster.workdir / f"{pod_name}.log",
        f"--resync-seconds={resync_seconds:g}",
        env={
            "FINETUNE_POD_NAME": pod_name,
            "FINETUNE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
            "PYTHONPATH": python_path,
        },
    )
