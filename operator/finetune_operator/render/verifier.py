"""The verification Job of a ModelAdapter stored on a PersistentVolumeClaim.

The operator's pod cannot mount every claim of every namespace, so a short pod in the adapter's
namespace mounts the claim read-only, runs the same checks the operator runs on s3:// artifacts
(adapters/volume_check.py) and hands the result back as its termination message. It has no API
access (no token is mounted) and runs under the restricted Pod Security level.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_core.api import ModelAdapter
from finetune_core.uri import parse_uri

from ..naming import MANAGED_BY
from ..settings import Settings
from .job import container_security, pod_security
from .owner import owner_reference

ADAPTER_LABEL = "finetune.dev/model-adapter"
VERIFIER_CONTAINER = "verify"
ARTIFACT_MOUNT = "/artifact"
SPEC_ENV = "FINETUNE_ADAPTER_SPEC"
TERMINATION_LOG = "/dev/termination-log"
DEADLINE_SECONDS = 600  # a pod that cannot start (claim bound elsewhere, image missing) fails the check
KEEP_FINISHED_SECONDS = 3600


def verifier_job_name(adapter_name: str, generation: int | None) -> str:
    """One Job per generation of the spec: a changed spec is verified by a new pod."""
    suffix = f"-verify-{generation or 0}"
    if len(adapter_name) + len(suffix) <= 63:
        return adapter_name + suffix
    digest = hashlib.sha256(adapter_name.encode()).hexdigest()[:8]
    return f"{adapter_name[: 63 - len(suffix) - 9]}-{digest}{suffix}"


def label_value(name: str) -> str:
    """A ModelAdapter's name as a label value (at most 63 characters; longer names end in a hash)."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def adapter_of(job: dict[str, Any]) -> str | None:
    """The ModelAdapter a verification Job belongs to: its owner (a label could not hold a long name)."""
    for owner in job.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == "ModelAdapter":
            return owner.get("name")
    return None


def artifact_path(uri: str) -> tuple[str, str]:
    """pvc://claim/some/dir/ -> (claim, some/dir)."""
    parsed = parse_uri(uri)
    if parsed.scheme != "pvc":
        raise ValueError(f"{uri} is not a pvc:// URI")
    return parsed.authority, parsed.path


def render_verifier_job(adapter: ModelAdapter, generation: int | None, settings: Settings) -> dict[str, Any]:
    name = adapter.metadata.name
    claim, path = artifact_path(adapter.spec.artifact.uri)
    labels = {
        ADAPTER_LABEL: label_value(name),
        "app.kubernetes.io/name": "finetune-verifier",
        "app.kubernetes.io/instance": label_value(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    container = {
        "name": VERIFIER_CONTAINER,
        "image": settings.verifier_image or settings.trainer_image,
        "imagePullPolicy": settings.verifier_image_pull_policy or settings.trainer_image_pull_policy,
        "command": [
            "python",
            "-m",
            "finetune_operator.adapters.volume_check",
            f"--dir={ARTIFACT_MOUNT}/{path}".rstrip("/"),
            f"--result={TERMINATION_LOG}",
        ],
        "env": [{"name": SPEC_ENV, "value": json.dumps(adapter.spec.to_api(), separators=(",", ":"))}],
        "volumeMounts": [{"name": "artifact", "mountPath": ARTIFACT_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [{"name": "artifact", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
    }
    if settings.verifier_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.verifier_image_pull_secrets]
    if settings.verifier_node_selector:
        pod_spec["nodeSelector"] = dict(settings.verifier_node_selector)
    if settings.verifier_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.verifier_tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": verifier_job_name(name, generation),
            "namespace": adapter.metadata.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(adapter, block_owner_deletion=False)],  # nothing waits for it
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"kubectl.kubernetes.io/default-container": VERIFIER_CONTAINER},
                },
                "spec": pod_spec,
            },
        },
    }
