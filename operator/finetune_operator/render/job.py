"""The training workload: a batch/v1 Job in Indexed completion mode, one pod per node.

Ranks are the completion indexes; rank 0 is reachable at a stable DNS name through the headless
Service (the pods' subdomain), which is where ``accelerate launch`` rendezvouses. Exit codes of
the trainer drive the Job's podFailurePolicy: configuration and data errors fail the job at
once, disruptions are not counted against the backoff limit, and everything else is retried
(each retry resumes from the last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from typing import Any

from finetune_core.api import ExitCode, FineTuneJob
from finetune_core.api.quantity import parse_quantity

from ..naming import (
    CONFIG_HASH_ANNOTATION,
    KUEUE_LABELS,
    SPEC_HASH_ANNOTATION,
    TRAINER_CONTAINER,
    child_labels,
    config_map_name,
    rank0_address,
    selector_labels,
    service_account_name,
    service_name,
    training_job_name,
)
from ..settings import Settings
from . import paths
from .owner import owner_reference
from .references import claims, credential_secrets
from .shared_cache import cache_annotation, mount_cache

MACHINE_RANK_ENV = "MACHINE_RANK"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
PROGRESS_TOKEN_SECONDS = 3600  # the kubelet refreshes it at 80% of its life
TRAINER_METRICS_PORT = 9400  # rank 0 serves Prometheus /metrics there (the chart's PodMonitor scrapes it)


def processes(job: FineTuneJob) -> int:
    resources = job.spec.resources
    return resources.nodes * max(resources.gpus_per_node, 1)


# accelerate launch turns every worker failure into exit 1 and does not pass SIGTERM on; the trainer's
# launcher keeps exit codes (the podFailurePolicy's input) and signals (preemption) intact.
LAUNCHER = ["python", "-m", "finetune_trainer.launch", "--"]


def trainer_command(job: FineTuneJob, settings: Settings) -> list[str]:
    """``accelerate launch`` with the topology of the job: machines, ranks, processes, rendezvous."""
    resources = job.spec.resources
    namespace = job.metadata.namespace or "default"
    command = ["accelerate", "launch", f"--num_processes={processes(job)}", f"--num_machines={resources.nodes}"]
    if resources.nodes > 1:
        command += [
            f"--machine_rank=$({MACHINE_RANK_ENV})",
            f"--main_process_ip={rank0_address(job.metadata.name, namespace)}",
            f"--main_process_port={settings.rendezvous_port}",
        ]
    if resources.gpus_per_node == 0:
        command.append("--cpu")
    elif processes(job) > 1:
        command.append("--multi_gpu")
    if resources.gpus_per_node > 0 and job.spec.training.precision != "fp32":
        command.append(f"--mixed_precision={job.spec.training.precision}")
    return [*command, "-m", "finetune_trainer", f"--config={paths.CONFIG_FILE}"]


def _resources(job: FineTuneJob) -> dict[str, Any]:
    spec = job.spec.resources
    limits: dict[str, str] = {}
    if spec.gpus_per_node:
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    if spec.cpu:
        limits["cpu"] = spec.cpu
    if spec.memory:
        limits["memory"] = spec.memory
    # requests = limits: a training pod that is throttled or evicted for memory wastes every GPU in it.
    return {"requests": dict(limits), "limits": limits} if limits else {}


def _environment(job: FineTuneJob) -> list[dict[str, Any]]:
    scratch = paths.SCRATCH_DIR
    env: list[dict[str, Any]] = [
        {
            "name": MACHINE_RANK_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "FINETUNE_CREDENTIALS_DIR", "value": paths.CREDENTIALS_DIR},
        {"name": "FINETUNE_PVC_ROOT", "value": paths.PVC_ROOT},
        {"name": "FINETUNE_SCRATCH_DIR", "value": f"{scratch}/work"},
        {"name": "FINETUNE_CACHE_DIR", "value": f"{scratch}/cache/finetune"},
        # The root filesystem is read-only: everything libraries cache goes to scratch.
        {"name": "HOME", "value": f"{scratch}/home"},
        {"name": "TMPDIR", "value": f"{scratch}/tmp"},  # noqa: S108 TMPDIR inside the pod's own scratch volume
        {"name": "HF_HOME", "value": f"{scratch}/huggingface"},
        {"name": "TRITON_CACHE_DIR", "value": f"{scratch}/triton"},
        {"name": "XDG_CACHE_HOME", "value": f"{scratch}/cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "FINETUNE_METRICS_PORT", "value": str(TRAINER_METRICS_PORT)},
    ]
    user = {e.name for e in job.spec.template.env}
    if (threads := threads_per_process(job)) and "OMP_NUM_THREADS" not in user:
        # torch sizes its thread pool from the node's cores, not the pod's CPU limit: on a big node a
        # limited pod would oversubscribe and be throttled.
        env.append({"name": "OMP_NUM_THREADS", "value": str(threads)})
    env += [e.to_api() for e in job.spec.template.env]
    return env


def cpu_cores(quantity: str) -> Fraction:
    """A CPU quantity ("32", "2.5", "500m", "1k", "2Ki") in cores, exactly."""
    return parse_quantity(quantity)


def threads_per_process(job: FineTuneJob) -> int | None:
    resources = job.spec.resources
    if not resources.cpu:
        return None
    per_node = max(resources.gpus_per_node, 1)
    return max(1, cpu_cores(resources.cpu) // per_node)


def _volumes_and_mounts(job: FineTuneJob, settings: Settings) -> tuple[list[dict], list[dict]]:
    name = job.metadata.name
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(name), "defaultMode": 0o444}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.shared_memory or "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": paths.CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": paths.SCRATCH_DIR},
        {"name": "shm", "mountPath": paths.SHM_DIR},
    ]
    if settings.progress_url:
        volumes.append(
            {
                "name": "progress-token",
                "projected": {
                    "defaultMode": 0o440,
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": settings.progress_audience,
                                "expirationSeconds": PROGRESS_TOKEN_SECONDS,
                                "path": "token",
                            }
                        }
                    ],
                },
            }
        )
        mounts.append({"name": "progress-token", "mountPath": paths.PROGRESS_TOKEN_DIR, "readOnly": True})
    # Secrets are mounted, never copied: their values reach the trainer as files only.
    for purpose, secret in credential_secrets(job, settings).items():
        volumes.append({"name": f"credentials-{purpose}", "secret": {"secretName": secret, "defaultMode": 0o440}})
        mounts.append(
            {"name": f"credentials-{purpose}", "mountPath": f"{paths.CREDENTIALS_DIR}/{purpose}", "readOnly": True}
        )
    for index, (claim, writable) in enumerate(claims(job, settings).items()):
        volumes.append(
            {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}}
        )
        mounts.append({"name": f"pvc-{index}", "mountPath": f"{paths.PVC_ROOT}/{claim}", "readOnly": not writable})
    volumes += [volume.to_api() for volume in job.spec.template.volumes]
    mounts += [mount.to_api() for mount in job.spec.template.volume_mounts]
    return volumes, mounts


def _tolerations(job: FineTuneJob) -> list[dict[str, Any]]:
    tolerations = list(job.spec.template.tolerations)
    resources = job.spec.resources
    if resources.gpus_per_node:
        # What the ExtendedResourceToleration admission plugin adds: GPU pools are tainted with the
        # resource's name so that only pods asking for GPUs land there.
        gpu = {"key": resources.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        if gpu not in tolerations:
            tolerations.append(gpu)
    return tolerations


def _affinity(job: FineTuneJob) -> dict[str, Any] | None:
    affinity = dict(job.spec.template.affinity or {})
    if job.spec.resources.nodes > 1 and "podAntiAffinity" not in affinity:
        # One pod per node: ranks of one job never share a node (and its NICs).
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector_labels(job.metadata.name)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    return affinity or None


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def render_pod_template(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    name = job.metadata.name
    template = job.spec.template
    volumes, mounts = _volumes_and_mounts(job, settings)
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": template.image or settings.trainer_image,
        "imagePullPolicy": template.image_pull_policy or settings.trainer_image_pull_policy,
        "command": LAUNCHER,
        "args": trainer_command(job, settings),
        "env": _environment(job),
        "volumeMounts": mounts,
        "ports": [
            {"name": "rendezvous", "containerPort": settings.rendezvous_port},
            {"name": "metrics", "containerPort": TRAINER_METRICS_PORT},
        ],
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources := _resources(job):
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service_name(name),
        "serviceAccountName": template.service_account_name or service_account_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    optional = {
        "nodeSelector": template.node_selector or None,
        "tolerations": _tolerations(job) or None,
        "affinity": _affinity(job),
        "priorityClassName": template.priority_class_name,
        "imagePullSecrets": [s.to_api() for s in template.image_pull_secrets] or None,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
    return {
        "metadata": {
            "labels": {**template.pod_labels, **child_labels(name)},
            "annotations": {"kubectl.kubernetes.io/default-container": TRAINER_CONTAINER, **template.pod_annotations},
        },
        "spec": pod_spec,
    }


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": sorted(int(code) for code in ExitCode if not code.retriable),
                },
            },
            # Node drains, preemption by higher-priority pods, API evictions: not the job's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def spec_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def render_job(job: FineTuneJob, settings: Settings, config_hash: str, shared_cache: bool = False) -> dict[str, Any]:
    """``shared_cache``: the job's plan was made with the namespace's model cache (render/shared_cache.py): the
    pods read the model from it, read-only."""
    name = job.metadata.name
    nodes = job.spec.resources.nodes
    labels = child_labels(name)
    labels.update({key: job.metadata.labels[key] for key in KUEUE_LABELS if key in job.metadata.labels})
    queued = KUEUE_LABELS[0] in labels
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": job.spec.backoff_limit,
        # A queued Job starts suspended; Kueue unsuspends it when the ClusterQueue has quota.
        "suspend": job.spec.suspend or queued,
        # A replacement pod starts only once the failed one is gone: two copies of a rank would
        # corrupt the rendezvous and race on checkpoints.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": _pod_failure_policy(),
        "template": render_pod_template(job, settings),
    }
    if shared_cache:
        mount_cache(spec["template"]["spec"], settings, writable=False)
    if job.spec.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    # No ttlSecondsAfterFinished on the Job: the operator deletes it once the outcome is recorded
    # (reconcile.py _expire). A Job the TTL controller removed before the operator looked would leave
    # the outcome unknown, and a FineTuneJob whose Job is gone would start it again.
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": training_job_name(name),
            "namespace": job.metadata.namespace,
            "labels": labels,
            "annotations": {
                CONFIG_HASH_ANNOTATION: config_hash,
                **cache_annotation(shared_cache),
            },
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }
    # What decides whether an existing Job still matches: everything but suspend, which is toggled in place.
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash({**spec, "suspend": None, "labels": labels})
    return manifest
