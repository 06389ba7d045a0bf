"""The publication gate: did fine-tuning help the task without forgetting general ability?

Both numbers are relative to the base model on the same data, so they compare across models and
tokenizers: task decrease = (base - adapted) / base, general increase = (adapted - base) / base.
"""

from __future__ import annotations

from .finetunejob import EvaluationSummary, Gate, GateResult, LossComparison


def relative_change(comparison: LossComparison | None) -> float | None:
    """(adapted - base) / base, or None when either loss is missing."""
    if comparison is None or comparison.base_loss is None or comparison.adapter_loss is None:
        return None
    if comparison.base_loss <= 0:
        return 0.0 if comparison.adapter_loss <= comparison.base_loss else float("inf")
    return (comparison.adapter_loss - comparison.base_loss) / comparison.base_loss


def judge(gate: Gate, task: LossComparison | None, general: LossComparison | None) -> EvaluationSummary:
    """The gate's verdict with a message that shows the numbers and the thresholds."""
    if gate.mode == "off":
        return EvaluationSummary(task=task, general=general, gate="Skipped", message="gate is off")

    findings: list[str] = []
    failed = False

    task_change = relative_change(task)
    if task_change is None:
        failed = True
        findings.append("task loss not measured")
    else:
        ok = -task_change >= gate.min_task_loss_decrease
        failed |= not ok
        findings.append(
            f"task loss {task.base_loss:.4f} -> {task.adapter_loss:.4f} ({task_change:+.1%}; "
            f"needs a decrease of at least {gate.min_task_loss_decrease:.1%}){'' if ok else ' FAILED'}"
        )

    general_change = relative_change(general)
    if general_change is None:
        if gate.mode == "enforce":
            failed = True
        findings.append("general loss not measured (no spec.data.general)")
    else:
        ok = general_change <= gate.max_general_loss_increase
        failed |= not ok
        findings.append(
            f"general loss {general.base_loss:.4f} -> {general.adapter_loss:.4f} ({general_change:+.1%}; "
            f"allowed increase {gate.max_general_loss_increase:.1%}){'' if ok else ' FAILED'}"
        )

    verdict: GateResult = "Passed" if not failed else ("Failed" if gate.mode == "enforce" else "Warned")
    return EvaluationSummary(task=task, general=general, gate=verdict, message="; ".join(findings))


def verdict_from_numbers(gate: Gate, summary: EvaluationSummary | None) -> EvaluationSummary | None:
    """The verdict the operator stands by: judged again from the reported losses, whatever gate and message
    came with them (a trainer's report is the tenant's word; only its numbers are evidence)."""
    if summary is None:
        return None
    return judge(gate, summary.task, summary.general)


def allows_publishing(summary: EvaluationSummary | None, gate: Gate) -> bool:
    if gate.mode != "enforce":
        return True
    return summary is not None and summary.gate == "Passed"
