"""Reconcile one ModelAdapter: verify its artifact and its serving compatibility.

Every new generation of the spec is verified. A Ready adapter is verified again every hour (every
day on a volume, where each check is a pod) and stays Ready meanwhile: an artifact deleted or altered
behind its back turns it Failed, a store that is only unreachable does not. A Failed one is retried
on resync (an upload may still be arriving, a Secret may be created later).
s3:// (and, in local mode, file://) artifacts are read by the operator, pvc:// ones by a verification pod
(adapters/volume.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from finetune_core.api import ModelAdapter, ModelAdapterStatus, format_validation_error
from pydantic import ValidationError

from ..context import Context, Outcome, age, utc_now
from ..events import event_for
from ..kube import MODELADAPTERS, KubeError
from ..render.session_policy import ForeignPrefix, S3Prefix, check_in_namespace, namespace_prefix
from ..render.verifier import verifier_job_name
from ..status.conditions import Change, set_condition
from ..storage import StorageUnreachable, open_store, secret_credentials
from ..sts import read_credentials
from .verification import Verification, verify_artifact
from .volume import verify_on_volume

log = logging.getLogger(__name__)

RETRY_FAILED_AFTER = dt.timedelta(seconds=30)
VERIFY_READY_EVERY = dt.timedelta(hours=1)
VERIFY_READY_ON_VOLUME_EVERY = dt.timedelta(days=1)  # a pod each time: less often


def reconcile_adapter(context: Context, namespace: str, name: str) -> Outcome:
    raw = context.caches[MODELADAPTERS].get(namespace, name)  # watch-fed: a recently verified one costs nothing
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return Outcome(None)
    generation = raw["metadata"].get("generation")
    try:
        adapter = ModelAdapter.model_validate(raw)
    except ValidationError as error:
        status = ModelAdapterStatus.model_validate(raw.get("status") or {})
        changes = _condition(
            status, "Ready", "False", "InvalidSpec", "; ".join(format_validation_error(error)), generation
        )
        status.phase = "Failed"
        status.observed_generation = generation  # seen, and invalid: Argo CD shows Degraded, not Progressing
        return _write(context, raw, status, changes)
    current = adapter.status
    recently_failed = current.phase == "Failed" and age(current.verified_at, dt.timedelta.max) < RETRY_FAILED_AFTER
    every = VERIFY_READY_ON_VOLUME_EVERY if adapter.spec.artifact.uri.startswith("pvc://") else VERIFY_READY_EVERY
    recently_ready = current.phase == "Ready" and age(current.verified_at, dt.timedelta.max) < every
    current_generation = current.observed_generation == generation
    if current_generation and (recently_ready or recently_failed):
        return Outcome(current.phase)

    status = current.model_copy(deep=True)
    status.observed_generation = generation
    if adapter.spec.artifact.uri.startswith("pvc://"):
        verification = verify_on_volume(context, adapter, generation)
        if verification is None and current_generation and current.phase == "Ready":
            return Outcome(current.phase)  # verified again in the background: it stays Ready meanwhile
        if verification is None:
            return _write(context, raw, status, _verifying(status, adapter, generation))
    else:
        try:
            verification = _verify_here(context, adapter)
        except StorageUnreachable as problem:
            if current_generation and current.phase == "Ready":
                # The store (or its Secret) is away for a moment: that says nothing about the artifact,
                # and serving stacks watching Ready must not drop it. Looked at again at the next resync.
                log.warning("re-verifying %s/%s: storage unreachable: %s", namespace, name, problem.message)
                return Outcome(current.phase)
            verification = Verification(problem_reason=problem.reason, problem_message=problem.message)
    return _write(context, raw, status, _apply(status, verification, generation))


def _verify_here(context: Context, adapter: ModelAdapter) -> Verification:
    """s3:// (with the credentials of the adapter's Secret) and file:// artifacts, read by the operator.

    With per-job credentials (STS), an artifact in the shared output is read only inside the adapter's own
    namespace's part of it, with a minted read-only session when the adapter names no Secret."""
    spec, namespace = adapter.spec, adapter.metadata.namespace
    secret = spec.artifact.credentials_secret_ref.name if spec.artifact.credentials_secret_ref else None
    if context.settings.sts_enabled:
        try:
            check_in_namespace(context.settings, namespace, spec.artifact.uri, "spec.artifact.uri")
        except ForeignPrefix as refused:
            return Verification(problem_reason="ArtifactOutsideNamespace", problem_message=str(refused))
        own = namespace_prefix(context.settings, namespace)
        if secret is None and spec.artifact.uri.startswith("s3://") and own.contains(S3Prefix.of(spec.artifact.uri)):
            credentials = read_credentials(
                context.kube, context.settings, namespace, spec.artifact.uri, "spec.artifact"
            )
            return verify_artifact(spec, open_store(spec.artifact.uri, credentials, context.settings))
    credentials = secret_credentials(context.kube, namespace, secret)
    return verify_artifact(spec, open_store(spec.artifact.uri, credentials, context.settings))


def _verifying(status: ModelAdapterStatus, adapter: ModelAdapter, generation) -> list[Change]:
    job = verifier_job_name(adapter.metadata.name, generation)
    message = f"the pod of Job {job} is reading {adapter.spec.artifact.uri}"
    status.phase = "Verifying"
    return [
        *_condition(status, "ArtifactVerified", "Unknown", "Verifying", message, generation),
        *_condition(status, "ServingCompatible", "Unknown", "ArtifactNotVerified", "not checked yet", generation),
        *_condition(status, "Ready", "False", "Verifying", message, generation),
    ]


def _apply(status: ModelAdapterStatus, verification: Verification, generation) -> list[Change]:
    """Conditions, phase and the found facts of one verification."""
    changes: list[Change] = []
    status.verified_at = utc_now()
    if not verification.verified:
        reason, message = verification.problem_reason or "VerificationFailed", verification.problem_message or ""
        changes += _condition(status, "ArtifactVerified", "False", reason, message, generation)
        changes += _condition(status, "ServingCompatible", "Unknown", "ArtifactNotVerified", "not checked", generation)
        changes += _condition(status, "Ready", "False", reason, message, generation)
        status.phase = "Failed"
        return changes
    status.digest = verification.digest
    status.size_bytes = verification.size_bytes
    status.target_modules = [module[:128] for module in verification.target_modules[:256]]  # the schema's bounds
    status.required_max_lora_rank = verification.required_max_lora_rank
    summary = verification.summary
    changes += _condition(status, "ArtifactVerified", "True", "DigestMatches", summary, generation)
    if verification.serving_problems:
        message = "; ".join(verification.serving_problems)
        changes += _condition(status, "ServingCompatible", "False", "NotServable", message, generation)
        changes += _condition(status, "Ready", "False", "NotServable", message, generation)
        status.phase = "Failed"
        return changes
    detail = "vLLM can load it"
    if verification.required_max_lora_rank:
        detail += f" with --max-lora-rank >= {verification.required_max_lora_rank}"
    message = "; ".join([detail, *verification.serving_notes])
    changes += _condition(status, "ServingCompatible", "True", "VllmCompatible", message, generation)
    changes += _condition(status, "Ready", "True", "Verified", f"{summary}; {detail}", generation)
    status.phase = "Ready"
    return changes


def _condition(
    status: ModelAdapterStatus, type_: str, value: str, reason: str, message: str, generation
) -> list[Change]:
    change = set_condition(status.conditions, type_, value, reason, message[:2048], utc_now(), generation)
    return [change] if change else []


def _write(context: Context, raw: dict[str, Any], status: ModelAdapterStatus, changes: list[Change]) -> Outcome:
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    desired = status.to_api()
    if desired != (raw.get("status") or {}):
        try:
            written = context.kube.merge_patch(MODELADAPTERS, namespace, name, {"status": desired}, "status")
        except KubeError as error:
            if error.status != 404:
                raise
        else:
            context.caches[MODELADAPTERS].written(written)
    now = utc_now()
    for change in changes:
        context.record_event(event_for(raw, change, now))
    return Outcome(status.phase, tuple(changes))
