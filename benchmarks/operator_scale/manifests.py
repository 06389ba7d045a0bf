"""What the benchmark puts on the cluster, as pure functions: the two workloads compared, the
unrelated pods and the extra simulated nodes.

A FineTuneJob and a bare Job ask for the same pod: one GPU, the same CPU and memory, the GPU
taint tolerated, and the same simulated run time (hack/kwok/stages.yaml), so the difference in
time to bound pods is the operator's.
"""

from __future__ import annotations

from typing import Any

from hack.localcluster.cluster import cpu_node

RUN_DURATION = "test.finetune.dev/run-duration"  # read by hack/kwok/stages.yaml
IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
POD_CPU = "4"
POD_MEMORY = "32Gi"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
OPERATOR_NAMESPACE = "opbench-system"
OPERATOR_ACCOUNT = "finetune-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
LEASE_NAME = "finetune-operator"
PODS_PER_BULK_NODE = 1000


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def finetune_job(name: str, run_duration: str) -> dict[str, Any]:
    """The smallest real FineTuneJob: one node, one GPU; its pod 'trains' for ``run_duration`` under kwok."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {
                "train": [{"uri": "s3://datasets/train.jsonl"}],
                "general": {"uri": "s3://datasets/general.jsonl"},
            },
            "resources": {"gpusPerNode": 1, "cpu": POD_CPU, "memory": POD_MEMORY},
            "template": {"podAnnotations": {RUN_DURATION: run_duration}},
        },
    }


def bare_job(name: str, run_duration: str) -> dict[str, Any]:
    """An Indexed Job of one 1-GPU pod, as a platform team would write it without the operator."""
    resources = {"nvidia.com/gpu": "1", "cpu": POD_CPU, "memory": POD_MEMORY}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {RUN_DURATION: run_duration}},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": IMAGE,
                            "command": ["python", "-m", "finetune_trainer"],
                            "resources": {"requests": resources, "limits": resources},
                        }
                    ],
                },
            },
        },
    }


def unrelated_pod(index: int, node: str) -> dict[str, Any]:
    """An ordinary web pod of someone else's (two containers, env, probes, requests), already bound to a
    simulated node so the scheduler is not involved; kwok makes it Running, and it never ends."""
    app = f"web-{index % 50}"
    env = [{"name": f"SETTING_{i}", "value": f"value-{index}-{i}"} for i in range(8)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{index:06d}",
            "labels": {"app": app, "tier": "frontend", "team": f"team-{index % 7}", "pod-template-hash": "5d4f8b7c9"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": f"registry.example.com/{app}:1.4.2",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
                    "env": env,
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 20},
                },
                {
                    "name": "log-shipper",
                    "image": "registry.example.com/log-shipper:2.0.1",
                    "args": ["--input=/var/log/app", "--output=stdout"],
                    "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}},
                    "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"}],
                },
            ],
            "volumes": [{"name": "logs", "emptyDir": {}}],
        },
    }


def bulk_node(name: str) -> dict[str, Any]:
    """A simulated CPU node that holds many unrelated pods (no GPUs: the compared pods never land here)."""
    return cpu_node(name, cpu="256", memory="2Ti", pods=PODS_PER_BULK_NODE + 10)


def bound_job(pod: dict[str, Any]) -> str | None:
    """The Job a pod belongs to, once the pod is bound to a node; None before."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return None
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(JOB_NAME_LABEL) or labels.get("job-name")
