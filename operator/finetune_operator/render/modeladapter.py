"""The ModelAdapter a succeeded FineTuneJob publishes. Not owned by the job: deleting the job keeps it."""

from __future__ import annotations

from typing import Any

from finetune_core.api import (
    API_VERSION,
    AdapterLora,
    Artifact,
    BaseModelRef,
    FineTuneJob,
    ModelAdapterSpec,
    SecretReference,
    SourceJob,
)
from finetune_core.api.finetunejob import ArtifactStatus, EvaluationSummary

from ..naming import JOB_LABEL, MANAGED_BY
from ..settings import Settings
from .trainer_config import adapter_name, output_secret, served_name


def render_model_adapter(
    job: FineTuneJob,
    artifact: ArtifactStatus,
    evaluation: EvaluationSummary | None,
    settings: Settings,
    target_modules: list[str],
    revision: str | None,
) -> dict[str, Any]:
    spec = job.spec
    lora = None
    if spec.method.type in ("lora", "qlora"):
        settings_lora = spec.method.lora
        rank = settings_lora.rank if settings_lora else 16
        alpha = settings_lora.alpha if settings_lora else 32
        names = target_modules or [
            m for m in (settings_lora.target_modules if settings_lora else []) if m != "all-linear"
        ]
        lora = AdapterLora(rank=rank, alpha=alpha, target_modules=names)
    secret = output_secret(job, settings)
    adapter_spec = ModelAdapterSpec(
        base_model=BaseModelRef(
            uri=spec.model.uri,
            revision=revision or spec.model.revision,
            served_name=spec.model.served_name or served_name(spec.model.uri),
        ),
        format="full-model" if spec.method.type == "full" else "peft-lora",
        lora=lora,
        artifact=Artifact(
            uri=artifact.uri,
            digest=artifact.digest,
            credentials_secret_ref=SecretReference(name=secret) if secret else None,
        ),
        source=SourceJob(fine_tune_job=job.metadata.name, uid=job.metadata.uid),
        evaluation=evaluation,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelAdapter",
        "metadata": {
            "name": adapter_name(job),
            "namespace": job.metadata.namespace,
            "labels": {**spec.adapter.labels, JOB_LABEL: job.metadata.name, "app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "spec": adapter_spec.to_api(),
    }


def is_publication_of(adapter: dict[str, Any], job: FineTuneJob, artifact: ArtifactStatus) -> bool:
    """Whether an existing ModelAdapter is the one this job publishes (created by an earlier try whose status
    write was lost): the same job by UID and the same artifact by location and digest. Anyone who can create
    ModelAdapters can copy a job's UID into spec.source; the artifact is what serving loads."""
    spec = adapter.get("spec") or {}
    source, stored = spec.get("source") or {}, spec.get("artifact") or {}
    return (
        source.get("uid") == job.metadata.uid
        and stored.get("uri") == artifact.uri
        and stored.get("digest") == artifact.digest
    )
