"""Deterministic names and labels of everything the operator creates for a FineTuneJob.

Names derive from the job's name only, so a handler that runs twice (or an operator restarted
mid-way) finds what it created before instead of creating it again.
"""

from __future__ import annotations

JOB_LABEL = "finetune.dev/job"
MANAGED_BY = "finetune-operator"
ANNOTATION_PREFIX = "finetune.dev"
SPEC_HASH_ANNOTATION = f"{ANNOTATION_PREFIX}/spec-hash"
CONFIG_HASH_ANNOTATION = f"{ANNOTATION_PREFIX}/config-hash"
PLAN_HASH_ANNOTATION = f"{ANNOTATION_PREFIX}/plan-inputs-hash"  # on the preflight Job: the spec it planned
SHARED_CACHE_ANNOTATION = f"{ANNOTATION_PREFIX}/shared-cache"  # on the preflight and training Jobs: they mount it
POLICY_HASH_ANNOTATION = f"{ANNOTATION_PREFIX}/session-policy-hash"
MINTED_AT_ANNOTATION = f"{ANNOTATION_PREFIX}/credentials-minted-at"
EXPIRES_AT_ANNOTATION = f"{ANNOTATION_PREFIX}/credentials-expire-at"
TRAINER_CONTAINER = "trainer"
PREFLIGHT_ROLE_LABEL = f"{ANNOTATION_PREFIX}/role"  # on the preflight Job and its pod: not training
THROUGHPUT_CONFIG_MAP = "finetune-throughput"  # in the operator's namespace: measured tokens/s of finished jobs
KUEUE_LABELS = ("kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class")


def training_job_name(job_name: str) -> str:
    return job_name


def preflight_job_name(job_name: str) -> str:
    """Fits: a FineTuneJob's name is at most 52 characters, a Job's 63."""
    return f"{job_name}-preflight"


def service_name(job_name: str) -> str:
    return job_name


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def service_account_name(job_name: str) -> str:
    return f"{job_name}-trainer"


def storage_secret_name(job_name: str) -> str:
    """The Secret of the job's minted storage credentials."""
    return f"{job_name}-storage"


def rank0_address(job_name: str, namespace: str) -> str:
    """Stable DNS name of rank 0: Indexed Job pods are named <job>-<index> under the headless Service."""
    return f"{training_job_name(job_name)}-0.{service_name(job_name)}.{namespace}.svc"


def selector_labels(job_name: str) -> dict[str, str]:
    return {JOB_LABEL: job_name}


def child_labels(job_name: str) -> dict[str, str]:
    return {
        **selector_labels(job_name),
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
