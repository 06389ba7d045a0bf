"""The preflight Job: one CPU-only pod that validates and counts a job's data before any GPU is claimed.

The same image, configuration, credentials and claims as the training pods (it reads what they will
read, with the same code), under the same restricted pod security; no GPU requested or tolerated, no
affinity, and for a GPU job no node selector of the training pods (those place GPU pods), a small CPU and memory
request, and a deadline of its own. Its labels are the job's, so the watch cache sees the Job and its
pod; it is owned by the FineTuneJob, so it goes with it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_core.api import FineTuneJob

from ..naming import (
    PLAN_HASH_ANNOTATION,
    PREFLIGHT_ROLE_LABEL,
    TRAINER_CONTAINER,
    child_labels,
    preflight_job_name,
)
from ..settings import Settings
from . import paths
from .job import _pod_failure_policy, processes, render_pod_template
from .owner import owner_reference
from .shared_cache import cache_annotation, mount_cache

# Transient failures (a store that blinked) get one more try; data and configuration errors none (podFailurePolicy).
PREFLIGHT_BACKOFF_LIMIT = 1


def plan_inputs(job: FineTuneJob) -> dict[str, Any]:
    """What the plan and its estimate are made of: the model and its revision, the data, the objective, the
    training settings, the method (the estimate's table row), the training processes and the node selector
    (the accelerator of the estimate), evaluation.maxSamples (it caps the eval and general sets the plan
    counts), and the image (its code validates and counts). Not suspend (a dry run is unsuspended onto its own
    plan), the rest of evaluation, output, adapter, deadlines, or the rest of the pod template."""
    spec = job.spec

    def dumped(model) -> Any:
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)

    return {
        "model": dumped(spec.model.model_copy(update={"served_name": None})),
        "method": dumped(spec.method),
        "objective": spec.objective,
        "data": dumped(spec.data),
        "training": dumped(spec.training),
        "evaluationMaxSamples": spec.evaluation.max_samples,
        "nodes": spec.resources.nodes,
        "gpusPerNode": spec.resources.gpus_per_node,
        "nodeSelector": dict(spec.template.node_selector),
        "image": spec.template.image,
    }


def plan_hash(job: FineTuneJob) -> str:
    return hashlib.sha256(json.dumps(plan_inputs(job), sort_keys=True).encode()).hexdigest()[:16]


def preflight_command(job: FineTuneJob) -> list[str]:
    """The trainer's preflight, told what the training pods will be: their ranks and their device."""
    accelerator = "gpu" if job.spec.resources.gpus_per_node > 0 else "cpu"
    return [
        "python",
        "-m",
        "finetune_trainer",
        "preflight",
        f"--config={paths.CONFIG_FILE}",
        f"--processes={processes(job)}",
        f"--accelerator={accelerator}",
    ]


def render_preflight_job(job: FineTuneJob, settings: Settings, shared_cache: bool = False) -> dict[str, Any]:
    """``shared_cache``: mount the namespace's model cache read-write (the preflight fills it)."""
    name = job.metadata.name
    template = render_pod_template(job, settings)
    pod = template["spec"]
    for placement in ("affinity", "subdomain", "priorityClassName"):
        pod.pop(placement, None)
    if job.spec.resources.gpus_per_node > 0:
        pod.pop("nodeSelector", None)  # it places GPU pods; a CPU job's selector names CPU nodes: kept
    gpu = job.spec.resources.gpu_resource
    tolerations = [t for t in pod.pop("tolerations", []) if t.get("key") != gpu]
    if tolerations:
        pod["tolerations"] = tolerations
    # No progress channel: the preflight reports through its termination message only.
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "progress-token"]
    container = pod["containers"][0]
    container.update(
        {
            "name": TRAINER_CONTAINER,
            "command": preflight_command(job),
            "volumeMounts": [m for m in container["volumeMounts"] if m["name"] != "progress-token"],
            "resources": {
                "requests": {"cpu": settings.preflight_cpu, "memory": settings.preflight_memory},
                "limits": {"cpu": settings.preflight_cpu, "memory": settings.preflight_memory},
            },
            # The report is JSON, or nothing: a log tail is never taken for it.
            "terminationMessagePolicy": "File",
        }
    )
    container.pop("args", None)
    container.pop("ports", None)
    if shared_cache:
        mount_cache(pod, settings, writable=True)
    labels = {**child_labels(name), PREFLIGHT_ROLE_LABEL: "preflight"}
    template["metadata"]["labels"] = {**template["metadata"]["labels"], PREFLIGHT_ROLE_LABEL: "preflight"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": preflight_job_name(name),
            "namespace": job.metadata.namespace,
            "labels": labels,
            "annotations": {
                PLAN_HASH_ANNOTATION: plan_hash(job),
                **cache_annotation(shared_cache),
            },
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": PREFLIGHT_BACKOFF_LIMIT,
            "activeDeadlineSeconds": settings.preflight_deadline_seconds,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": _pod_failure_policy(),
            "template": template,
        },
    }
