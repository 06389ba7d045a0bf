"""A progress report becomes a merge patch of the FineTuneJob's status. Pure."""

from __future__ import annotations

from typing import Any

from finetune_core.api import Gate, ProgressReport, verdict_from_numbers
from pydantic import ValidationError


def human_duration(seconds: int) -> str:
    """1h5m, 12m3s, 40s: short enough for a kubectl column (ETA, and EST: planner.py)."""
    hours, rest = divmod(max(int(seconds), 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def job_gate(finetunejob: dict[str, Any]) -> Gate:
    """The FineTuneJob's gate as stored; the default (enforcing) gate if it does not parse (an object written
    before a schema change: its reconcile says what is wrong with it)."""
    stored = ((finetunejob.get("spec") or {}).get("evaluation") or {}).get("gate") or {}
    try:
        return Gate.model_validate(stored)
    except ValidationError:
        return Gate()


def status_patch(report: ProgressReport, gate: Gate, now: str) -> dict[str, Any]:
    """The report's numbers as status; the gate's verdict is the operator's own, judged from them by ``gate``."""
    progress: dict[str, Any] = {"step": report.step, "updatedAt": now}
    if report.total_steps:
        progress["totalSteps"] = report.total_steps
        progress["percent"] = min(100, int(100 * report.step / report.total_steps))
    optional = {
        "epoch": _rounded(report.epoch, 3),
        "trainLoss": _rounded(report.train_loss),
        "evalLoss": _rounded(report.eval_loss),
        "learningRate": report.learning_rate,
        "tokensPerSecond": _rounded(report.tokens_per_second, 1),
        "etaSeconds": report.eta_seconds,
        "eta": human_duration(report.eta_seconds) if report.eta_seconds is not None else None,
    }
    progress.update({key: value for key, value in optional.items() if value is not None})
    patch: dict[str, Any] = {"progress": progress}
    if report.checkpoint is not None:
        patch["checkpoint"] = {"step": report.checkpoint.step, "uri": report.checkpoint.uri, "savedAt": now}
    if report.resumed_from_step is not None:
        patch["resumedFromStep"] = report.resumed_from_step
    elif report.checkpoint_fallback is not None and report.checkpoint_fallback.to_step is None:
        patch["resumedFromStep"] = None  # no checkpoint was usable: this attempt started over (null deletes)
    if report.model_revision:
        patch["model"] = {"revision": report.model_revision}
    if report.evaluation is not None:
        patch["evaluation"] = verdict_from_numbers(gate, report.evaluation).to_api()
    if report.artifact is not None:
        patch["artifact"] = report.artifact.to_api()
    return patch
