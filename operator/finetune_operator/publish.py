"""Publishing: a succeeded FineTuneJob whose gate allows it gets its ModelAdapter.

The artifact's location and digest come from the trainer's final progress report, or from the
summary it leaves in its termination message (both land in status.artifact, see status/observe.py);
when neither is there (pods gone with ttlSecondsAfterFinished before the operator looked), the
training report the trainer leaves next to its checkpoints is read instead.
"""

from __future__ import annotations

import json
import logging

from finetune_core.api import (
    REPORT_FILE_NAME,
    FineTuneJob,
    FineTuneJobStatus,
    TrainingReport,
    allows_publishing,
    verdict_from_numbers,
)
from finetune_core.api.finetunejob import AdapterStatus, ArtifactStatus
from pydantic import ValidationError

from .context import Context
from .kube import MODELADAPTERS
from .render import ResolutionError, resolve_trainer_config
from .render.modeladapter import is_publication_of, render_model_adapter
from .status.conditions import Change, is_true, set_condition
from .storage import StorageProblem, open_store
from .sts import job_output_credentials

log = logging.getLogger(__name__)


def _training_report(context: Context, job: FineTuneJob) -> tuple[TrainingReport | None, str]:
    """The report the trainer leaves next to its checkpoints, or None and why it could not be read."""
    try:
        config = resolve_trainer_config(job, context.settings)
    except ResolutionError as error:  # the operator's default output was removed since the job ran
        return None, str(error)
    location = f"{config.output.checkpoints_uri}{REPORT_FILE_NAME}"
    try:
        credentials = job_output_credentials(context.kube, context.settings, job, config.output.checkpoints_uri)
        store = open_store(config.output.checkpoints_uri, credentials, context.settings)
        raw = store.read_small(REPORT_FILE_NAME)
    except StorageProblem as problem:  # unreachable, or a report above the size bound
        return None, problem.message
    if raw is None:
        return None, f"no {location}"
    try:
        return TrainingReport.model_validate_json(raw), ""
    except ValidationError as error:
        return None, f"{location} is not a training report: {error.errors()[0]['msg']}"


def _target_modules(context: Context, job: FineTuneJob, artifact: ArtifactStatus) -> list[str]:
    """The module names PEFT resolved (all-linear becomes q_proj, ...), from the artifact itself."""
    try:
        credentials = job_output_credentials(context.kube, context.settings, job, artifact.uri)
        raw = open_store(artifact.uri, credentials, context.settings).read_small("adapter_config.json")
    except (StorageProblem, ResolutionError):
        return []  # the ModelAdapter's own verification reports what is wrong with the storage
    try:
        config = json.loads(raw) if raw is not None else {}
    except (ValueError, RecursionError):
        return []  # the ModelAdapter's verification says what is wrong with it
    targets = (config.get("target_modules") if isinstance(config, dict) else None) or []
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list):
        return []
    return sorted({t.rsplit(".", 1)[-1] for t in targets if isinstance(t, str)})


def publish(context: Context, job: FineTuneJob, status: FineTuneJobStatus, now: str) -> list[Change]:
    """Create the ModelAdapter once; record it in ``status`` (Published condition, status.adapter)."""
    if not is_true(status.conditions, "Succeeded") or is_true(status.conditions, "Published"):
        return []
    generation = job.metadata.generation

    def condition(value: str, reason: str, message: str) -> list[Change]:
        change = set_condition(status.conditions, "Published", value, reason, message, now, generation)
        return [change] if change else []

    artifact, evaluation, revision = status.artifact, status.evaluation, status.model.revision if status.model else None
    why = "no final progress report or termination message"
    if artifact is None:
        report, problem = _training_report(context, job)
        why += f", and {problem}" if problem else ", and the training report names no artifact"
        if report is not None and report.artifact is not None:
            artifact = ArtifactStatus.model_validate(report.artifact.model_dump())
            evaluation = evaluation or verdict_from_numbers(job.spec.evaluation.gate, report.evaluation)
            revision = revision or report.model_revision
            status.artifact, status.evaluation = artifact, evaluation
    if artifact is None:
        return condition("False", "ArtifactUnknown", f"training succeeded but no artifact is known: {why}")
    if not allows_publishing(evaluation, job.spec.evaluation.gate):
        return condition("False", "GateFailed", (evaluation.message if evaluation else None) or "the gate failed")

    manifest = render_model_adapter(
        job, artifact, evaluation, context.settings, _target_modules(context, job, artifact), revision
    )
    name = manifest["metadata"]["name"]
    # Read from the watch-fed cache; one created meanwhile fails the create (409), and its event brings
    # the job back to be compared here.
    existing = context.caches[MODELADAPTERS].get(job.metadata.namespace, name)
    if existing is None:
        existing, _ = context.kube.create(manifest, read_existing=False)
        context.caches[MODELADAPTERS].created(existing)
    elif not is_publication_of(existing, job, artifact):
        return condition(
            "False",
            "AdapterNameTaken",
            f"ModelAdapter {name} exists and is not this job's publication of {artifact.uri} ({artifact.digest}): "
            "delete it and the job publishes",
        )
    status.adapter = AdapterStatus(name=name, uri=artifact.uri, digest=artifact.digest)
    return condition("True", "AdapterPublished", f"published ModelAdapter {name} ({artifact.digest})")
