"""Reconcile one ModelAdapter: verify its artifact and its serving compatibility, once per generation.

A Ready adapter is not verified again until its spec changes; a Failed one is retried on resync
(an upload may still be arriving, a Secret may be created later).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import ValidationError

from ..api import MANIFEST_FILE_NAME, ModelAdapter, ModelAdapterStatus, format_validation_error, required_max_lora_rank
from ..context import Context, Outcome, utc_now
from ..events import event_for
from ..kube import MODELADAPTERS, KubeError
from ..status.conditions import Change, set_condition
from ..storage import StorageUnreachable, open_store, secret_credentials
from .verify import (
    ADAPTER_CONFIG,
    BASE_CONFIG,
    ArtifactProblem,
    StoredFile,
    check_files,
    check_manifest,
    check_serving,
    parse_json,
)

log = logging.getLogger(__name__)

# Adapters are small (MBs): hash every file. Full models can be hundreds of GB: check sizes and trust the
# manifest's hashes (written last by the trainer) rather than downloading them on every verification.
HASH_LIMIT_BYTES = 1 << 30
RETRY_FAILED_AFTER = dt.timedelta(seconds=30)


def _age(timestamp: str | None) -> dt.timedelta:
    if not timestamp:
        return dt.timedelta.max
    return dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def reconcile_adapter(context: Context, namespace: str, name: str) -> Outcome:
    raw = context.kube.get(MODELADAPTERS, namespace, name)
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
        return _write(context, raw, status, changes)
    current = adapter.status
    recently_failed = current.phase == "Failed" and _age(current.verified_at) < RETRY_FAILED_AFTER
    if current.observed_generation == generation and (current.phase == "Ready" or recently_failed):
        return Outcome(current.phase)

    status = current.model_copy(deep=True)
    status.observed_generation = generation
    changes: list[Change] = []
    if adapter.spec.artifact.uri.startswith("pvc://"):
        return _write(context, raw, *_unreadable_volume(adapter, status, generation))
    try:
        manifest, stored, adapter_config, base_config = _read(context, adapter)
        summary = check_files(manifest, stored)
    except (ArtifactProblem, StorageUnreachable) as problem:
        changes += _condition(status, "ArtifactVerified", "False", problem.reason, problem.message, generation)
        changes += _condition(status, "ServingCompatible", "Unknown", "ArtifactNotVerified", "not checked", generation)
        changes += _condition(status, "Ready", "False", problem.reason, problem.message, generation)
        status.phase = "Failed"
        status.verified_at = utc_now()
        return _write(context, raw, status, changes)

    status.digest = manifest.digest
    status.size_bytes = manifest.size_bytes
    changes += _condition(status, "ArtifactVerified", "True", "DigestMatches", summary, generation)
    compatibility = check_serving(adapter.spec, adapter_config, base_config)
    status.target_modules = compatibility.target_modules
    status.required_max_lora_rank = compatibility.required_max_lora_rank
    if compatibility.problems:
        message = "; ".join(compatibility.problems)
        changes += _condition(status, "ServingCompatible", "False", "NotServable", message, generation)
        changes += _condition(status, "Ready", "False", "NotServable", message, generation)
        status.phase = "Failed"
    else:
        detail = "vLLM can load it"
        if compatibility.required_max_lora_rank:
            detail += f" with --max-lora-rank >= {compatibility.required_max_lora_rank}"
        message = "; ".join([detail, *compatibility.notes])
        changes += _condition(status, "ServingCompatible", "True", "VllmCompatible", message, generation)
        changes += _condition(status, "Ready", "True", "Verified", f"{summary}; {detail}", generation)
        status.phase = "Ready"
    status.verified_at = utc_now()
    return _write(context, raw, status, changes)


def _unreadable_volume(adapter: ModelAdapter, status: ModelAdapterStatus, generation) -> tuple:
    """pvc:// artifacts: the operator's pod cannot mount every claim of every namespace.

    An adapter its own FineTuneJob published carries the digest the trainer computed after writing the
    files, and the trainer writes only what vLLM loads (PEFT LoRA, bias none, no DoRA, no
    modules_to_save): that is taken as verified, and said so. A hand-written import on a claim is not.
    """
    spec, changes = adapter.spec, []
    if spec.source is None or not spec.artifact.digest:
        message = "the operator cannot read pvc:// artifacts; import from s3:// to have it verified"
        changes += _condition(status, "ArtifactVerified", "Unknown", "StorageNotReadable", message, generation)
        changes += _condition(status, "ServingCompatible", "Unknown", "ArtifactNotVerified", "not checked", generation)
        changes += _condition(status, "Ready", "False", "StorageNotReadable", message, generation)
        status.phase = "Pending"
        return status, changes
    status.digest = spec.artifact.digest
    if spec.lora is not None:
        status.required_max_lora_rank = required_max_lora_rank(spec.lora.rank)
        status.target_modules = list(spec.lora.target_modules)
    trusted = f"digest {spec.artifact.digest} as computed by the trainer of FineTuneJob {spec.source.fine_tune_job}"
    changes += _condition(status, "ArtifactVerified", "True", "DigestFromTrainer", trusted, generation)
    written = "written by the trainer as vLLM loads it (bias none, no DoRA, no modules_to_save)"
    changes += _condition(status, "ServingCompatible", "True", "WrittenByTrainer", written, generation)
    changes += _condition(status, "Ready", "True", "DigestFromTrainer", f"{trusted}; {written}", generation)
    status.phase = "Ready"
    status.verified_at = utc_now()
    return status, changes


def _read(context: Context, adapter: ModelAdapter):
    spec = adapter.spec
    secret = spec.artifact.credentials_secret_ref.name if spec.artifact.credentials_secret_ref else None
    credentials = secret_credentials(context.kube, adapter.metadata.namespace, secret)
    store = open_store(spec.artifact.uri, credentials)
    manifest = check_manifest(spec, store.read(MANIFEST_FILE_NAME))
    hash_all = manifest.size_bytes <= HASH_LIMIT_BYTES
    stored = {
        entry.path: StoredFile(store.size(entry.path), store.sha256(entry.path) if hash_all else None)
        for entry in manifest.files
    }
    adapter_config = parse_json(store.read(ADAPTER_CONFIG), ADAPTER_CONFIG)
    base_config = parse_json(store.read(BASE_CONFIG), BASE_CONFIG)
    return manifest, stored, adapter_config, base_config


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
            context.kube.merge_patch(MODELADAPTERS, namespace, name, {"status": desired}, "status")
        except KubeError as error:
            if error.status != 404:
                raise
    now = utc_now()
    for change in changes:
        context.kube.create_event(event_for(raw, change, now))
    return Outcome(status.phase, tuple(changes))
