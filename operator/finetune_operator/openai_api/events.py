"""A job's events and checkpoints as OpenAI lists them, read from what the FineTuneJob's status records.

The status keeps the latest of each thing (each condition's last transition, the latest progress report,
the newest checkpoint, the final evaluation), so the events are those: creation, queueing or pausing,
training start, the latest step's metrics, the newest checkpoint, the gate's verdict, and the outcome with
its reason. Ids are derived from what they describe, so the same event keeps its id between calls
(``after`` pages through them).
"""

from __future__ import annotations

import hashlib
from typing import Any

from .jobs import CANCELLED_AT, conditions_of, unix


def _id(prefix: str, job: str, *parts: object) -> str:
    digest = hashlib.sha256("/".join(str(part) for part in (job, *parts)).encode()).hexdigest()[:24]
    return f"{prefix}-{digest}"


def _event(job: str, kind: str, at: int, message: str, level: str = "info", data: dict | None = None) -> dict:
    return {
        "id": _id("ftevent", job, kind, at, message),
        "object": "fine_tuning.job.event",
        "created_at": at,
        "level": level,
        "message": message,
        "type": "metrics" if data is not None else "message",
        "data": data or {},
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def step_metrics(progress: dict[str, Any]) -> dict[str, Any]:
    values = {
        "step": progress.get("step"),
        "total_steps": progress.get("totalSteps"),
        "train_loss": _number(progress.get("trainLoss")),
        "valid_loss": _number(progress.get("evalLoss")),
        "learning_rate": _number(progress.get("learningRate")),
        "epoch": _number(progress.get("epoch")),
    }
    return {key: value for key, value in values.items() if value is not None}


def _condition_events(job: str, conditions: dict[str, dict[str, Any]]) -> list[dict]:
    events = []

    def when(type_: str) -> int | None:
        return unix((conditions.get(type_) or {}).get("lastTransitionTime"))

    def add(type_: str, status: str, message: str, level: str = "info") -> None:
        condition = conditions.get(type_) or {}
        if condition.get("status") == status and (at := when(type_)) is not None:
            events.append(_event(job, f"{type_}={status}", at, message, level))

    suspended = conditions.get("Suspended") or {}
    paused = suspended.get("reason") == "JobSuspended"
    add("Suspended", "True", "Fine-tuning job paused" if paused else "Fine-tuning job queued")
    add("Running", "True", "Fine-tuning job started")
    evaluated = conditions.get("Evaluated") or {}
    verdict = evaluated.get("message") or evaluated.get("reason") or ""
    add("Evaluated", "True", f"Evaluation: {verdict}", "warn" if evaluated.get("reason") == "GateWarned" else "info")
    add("Evaluated", "False", f"Evaluation failed the gate: {verdict}", "error")
    add("Succeeded", "True", "Training finished")
    failed = conditions.get("Failed") or {}
    add("Failed", "True", f"Fine-tuning job failed ({failed.get('reason')}): {failed.get('message') or ''}", "error")
    published = conditions.get("Published") or {}
    add("Published", "True", "The job has successfully completed: the fine-tuned model is published")
    if published.get("reason") == "GateFailed":
        add("Published", "False", "The fine-tuned model was not published: it did not pass the gate", "error")
    resolved = conditions.get("ModelResolved") or {}
    add(
        "ModelResolved",
        "False",
        f"The model was refused ({resolved.get('reason')}): {resolved.get('message')}",
        "error",
    )
    return events


def job_events(finetunejob: dict[str, Any]) -> list[dict]:
    """The job's events, newest first."""
    meta = finetunejob.get("metadata") or {}
    job = meta.get("name") or ""
    status = finetunejob.get("status") or {}
    events = []
    if (created := unix(meta.get("creationTimestamp"))) is not None:
        events.append(_event(job, "created", created, f"Created fine-tuning job: {job}"))
    events += _condition_events(job, conditions_of(finetunejob))
    progress = status.get("progress") or {}
    if (at := unix(progress.get("updatedAt"))) is not None and progress.get("step") is not None:
        metrics = step_metrics(progress)
        loss = f", training loss {metrics['train_loss']:.4f}" if "train_loss" in metrics else ""
        total = f"/{metrics['total_steps']}" if "total_steps" in metrics else ""
        events.append(_event(job, "step", at, f"Step {metrics['step']}{total}{loss}", data=metrics))
    checkpoint = status.get("checkpoint") or {}
    if (at := unix(checkpoint.get("savedAt"))) is not None:
        events.append(_event(job, "checkpoint", at, f"Checkpoint saved at step {checkpoint.get('step')}"))
    if (at := unix((meta.get("annotations") or {}).get(CANCELLED_AT))) is not None:
        events.append(_event(job, "cancelled", at, "Fine-tuning job cancelled"))
    order = {event["id"]: index for index, event in enumerate(events)}
    return sorted(events, key=lambda event: (event["created_at"], order[event["id"]]), reverse=True)


def job_checkpoints(finetunejob: dict[str, Any]) -> list[dict]:
    """The newest checkpoint (the one the status records), with the losses known at its step."""
    meta = finetunejob.get("metadata") or {}
    job = meta.get("name") or ""
    status = finetunejob.get("status") or {}
    checkpoint = status.get("checkpoint") or {}
    if checkpoint.get("step") is None:
        return []
    step = int(checkpoint["step"])
    metrics: dict[str, Any] = {"step": float(step)}
    progress = status.get("progress") or {}
    if progress.get("step") == step:
        metrics.update({k: v for k, v in step_metrics(progress).items() if k in ("train_loss", "valid_loss")})
    task = (status.get("evaluation") or {}).get("task") or {}
    if (loss := _number(task.get("adapterLoss"))) is not None:
        metrics["full_valid_loss"] = loss
    return [
        {
            "id": _id("ftckpt", job, step),
            "object": "fine_tuning.job.checkpoint",
            "created_at": unix(checkpoint.get("savedAt")) or unix(meta.get("creationTimestamp")) or 0,
            "fine_tuned_model_checkpoint": f"{job}:ckpt-step-{step}",
            "fine_tuning_job_id": job,
            "metrics": metrics,
            "step_number": step,
        }
    ]
