"""What the trainer reports: live progress (pushed to the operator) and the final training report."""

from __future__ import annotations

from typing import Any, Literal

from .base import ApiModel, Int64, describe, text
from .finetunejob import EvaluationSummary

REPORT_FILE_NAME = "training_report.json"
MANIFEST_FILE_NAME = "manifest.json"

Stage = Literal["starting", "training", "evaluating", "uploading", "done"]


class CheckpointReport(ApiModel):
    step: Int64 = describe("Optimizer step of the checkpoint.", ge=0)
    uri: text(2048) = describe("Where it is stored.")


# Why a sealed checkpoint was not resumed (finetune_trainer.checkpoint_seal says what each means).
CheckpointFallbackReason = Literal[
    "marker_unreadable", "unverifiable", "file_missing", "size_mismatch", "digest_mismatch", "unreadable"
]


class CheckpointFallback(ApiModel):
    """The newest sealed checkpoint failed its check: the run resumed from an older one, or from the start."""

    from_step: Int64 = describe("Step of the newest checkpoint, which was not resumed.", ge=0)
    to_step: Int64 | None = describe(
        "Step of the checkpoint resumed instead; absent when none was usable and the run started over.",
        default=None,
        ge=0,
    )
    reason: CheckpointFallbackReason = describe("Why the newest checkpoint was refused.")


class ArtifactReport(ApiModel):
    uri: text(2048) = describe("Directory of the artifact.")
    digest: text(71, r"^sha256:[a-f0-9]{64}$") = describe("Digest over the artifact's files (the manifest's).")
    size_bytes: Int64 = describe("Total size of the files.", ge=0)


class ProgressReport(ApiModel):
    """One report from the trainer's rank 0. Every field is optional but the step."""

    stage: Stage = describe("What the trainer is doing.", default="training")
    step: Int64 = describe("Optimizer steps done.", ge=0)
    total_steps: Int64 | None = describe("Optimizer steps planned.", default=None, ge=0)
    epoch: float | None = describe("Passes over the training mix.", default=None, ge=0)
    train_loss: float | None = describe("Training loss since the previous report.", default=None)
    eval_loss: float | None = describe("Latest task eval loss.", default=None)
    learning_rate: float | None = describe("Current learning rate.", default=None, ge=0)
    tokens_per_second: float | None = describe("Real tokens per second, all ranks.", default=None, ge=0)
    eta_seconds: Int64 | None = describe("Estimated seconds to the end of training.", default=None, ge=0)
    checkpoint: CheckpointReport | None = describe("The checkpoint just saved.", default=None)
    resumed_from_step: Int64 | None = describe("Step this run resumed from.", default=None, ge=0)
    checkpoint_fallback: CheckpointFallback | None = describe(
        "Set once per attempt when the newest checkpoint was damaged and an older one (or none) was resumed.",
        default=None,
    )
    model_revision: text(255) | None = describe("Resolved commit of an hf:// base model.", default=None)
    evaluation: EvaluationSummary | None = describe("The final evaluation.", default=None)
    artifact: ArtifactReport | None = describe("The stored artifact, once complete.", default=None)


class FinalSummary(ApiModel):
    """What a trainer that succeeded leaves in its container's termination message (global rank 0): enough
    to publish without the progress channel and without reading the output location (the operator
    cannot mount pvc:// claims)."""

    artifact: ArtifactReport = describe("The stored artifact.")
    evaluation: EvaluationSummary | None = describe("The final evaluation.", default=None)
    model_revision: text(255) | None = describe("Resolved commit of an hf:// base model.", default=None)
    train_seconds: float | None = describe(
        "Seconds of the optimizer steps (no loading, evaluation or upload): the measured throughput's divisor.",
        default=None,
        ge=0.0,
    )

    def to_message(self) -> str:
        """Compact JSON under the kubelet's 4096 bytes: the gate's reasoning is cut, never the numbers."""
        summary = self.model_copy(deep=True)
        if summary.evaluation is not None and summary.evaluation.message:
            summary.evaluation.message = summary.evaluation.message[:1500]
        return summary.model_dump_json(by_alias=True, exclude_none=True)


class SourceStatistics(ApiModel):
    uri: str
    format: str
    rows: Int64 = 0
    invalid_rows: Int64 = 0
    truncated_rows: Int64 = 0
    dropped_rows: Int64 = 0
    tokens: Int64 = 0
    invalid_examples: list[str] = describe("Up to ten 'file:line: reason' lines.", default_factory=list)


class TrainingReport(ApiModel):
    """Written next to the artifact (training_report.json) and kept in the checkpoint directory."""

    job: dict[str, str]
    config_sha256: str
    model_revision: str | None = None
    data: list[SourceStatistics] = describe("Per training source.", default_factory=list)
    steps: Int64 = 0
    tokens_seen: Int64 = 0
    wall_seconds: float = 0.0
    train_seconds: float | None = None  # the optimizer steps alone, over every attempt
    resumed_from_step: Int64 | None = None
    final_train_loss: float | None = None
    evaluation: EvaluationSummary | None = None
    artifact: ArtifactReport | None = None
    versions: dict[str, str] = describe("Library versions.", default_factory=dict)
    device: dict[str, Any] = describe("Accelerator, processes, precision.", default_factory=dict)
