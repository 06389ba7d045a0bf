"""The publication gate: publish only what helps the task without forgetting general ability."""

from __future__ import annotations

import math

import pytest
from finetune_core.api import (
    EvaluationSummary,
    Gate,
    LossComparison,
    allows_publishing,
    judge,
    relative_change,
    verdict_from_numbers,
)


def losses(base: float | None, adapted: float | None) -> LossComparison:
    return LossComparison(base_loss=base, adapter_loss=adapted)


BETTER_TASK = losses(2.0, 1.5)  # -25%
WORSE_TASK = losses(2.0, 2.5)  # +25%
STABLE_GENERAL = losses(3.0, 3.03)  # +1%
FORGETFUL_GENERAL = losses(2.0, 2.5)  # +25%


@pytest.mark.parametrize("mode", ["enforce", "warn"])
def test_helping_the_task_without_forgetting_passes(mode):
    summary = judge(Gate(mode=mode), BETTER_TASK, STABLE_GENERAL)
    assert summary.gate == "Passed"
    assert "FAILED" not in summary.message


def test_the_message_shows_the_numbers_and_thresholds():
    message = judge(Gate(), BETTER_TASK, STABLE_GENERAL).message
    assert "task loss 2.0000 -> 1.5000 (-25.0%; needs a decrease of at least 0.0%)" in message
    assert "general loss 3.0000 -> 3.0300 (+1.0%; allowed increase 5.0%)" in message


def test_the_summary_carries_both_comparisons():
    summary = judge(Gate(), BETTER_TASK, STABLE_GENERAL)
    assert (summary.task, summary.general) == (BETTER_TASK, STABLE_GENERAL)


def test_an_off_gate_is_skipped_whatever_the_numbers():
    summary = judge(Gate(mode="off"), WORSE_TASK, FORGETFUL_GENERAL)
    assert summary.gate == "Skipped"
    assert summary.message == "gate is off"
    assert summary.task == WORSE_TASK


@pytest.mark.parametrize(("mode", "verdict"), [("enforce", "Failed"), ("warn", "Warned")])
def test_a_worse_task_loss_fails(mode, verdict):
    summary = judge(Gate(mode=mode), WORSE_TASK, STABLE_GENERAL)
    assert summary.gate == verdict
    assert "task loss 2.0000 -> 2.5000 (+25.0%; needs a decrease of at least 0.0%) FAILED" in summary.message


def test_a_task_decrease_below_the_required_one_fails():
    summary = judge(Gate(min_task_loss_decrease=0.5), BETTER_TASK, STABLE_GENERAL)
    assert summary.gate == "Failed"


def test_a_negative_required_decrease_tolerates_a_small_task_regression():
    summary = judge(Gate(min_task_loss_decrease=-0.5), WORSE_TASK, STABLE_GENERAL)
    assert summary.gate == "Passed"


@pytest.mark.parametrize(("mode", "verdict"), [("enforce", "Failed"), ("warn", "Warned")])
def test_forgetting_general_ability_fails(mode, verdict):
    summary = judge(Gate(mode=mode), BETTER_TASK, FORGETFUL_GENERAL)
    assert summary.gate == verdict
    assert "general loss 2.0000 -> 2.5000 (+25.0%; allowed increase 5.0%) FAILED" in summary.message


def test_thresholds_are_inclusive():
    gate = Gate(min_task_loss_decrease=0.25, max_general_loss_increase=0.25)
    assert judge(gate, BETTER_TASK, FORGETFUL_GENERAL).gate == "Passed"


def test_missing_general_data_fails_an_enforced_gate():
    summary = judge(Gate(mode="enforce"), BETTER_TASK, None)
    assert summary.gate == "Failed"
    assert "general loss not measured" in summary.message


def test_missing_general_data_passes_a_warning_gate():
    summary = judge(Gate(mode="warn"), BETTER_TASK, None)
    assert summary.gate == "Passed"
    assert "general loss not measured" in summary.message


def test_a_general_comparison_without_losses_counts_as_missing():
    assert judge(Gate(mode="enforce"), BETTER_TASK, losses(None, 2.0)).gate == "Failed"


@pytest.mark.parametrize(("mode", "verdict"), [("enforce", "Failed"), ("warn", "Warned")])
def test_an_unmeasured_task_loss_fails(mode, verdict):
    summary = judge(Gate(mode=mode), None, STABLE_GENERAL)
    assert summary.gate == verdict
    assert "task loss not measured" in summary.message


def test_relative_change_is_adapted_minus_base_over_base():
    assert relative_change(losses(2.0, 1.5)) == -0.25
    assert relative_change(losses(2.0, 2.5)) == 0.25
    assert relative_change(None) is None
    assert relative_change(losses(None, 1.0)) is None
    assert relative_change(losses(1.0, None)) is None


def test_a_zero_base_loss_is_no_change_unless_the_adapted_loss_is_higher():
    assert relative_change(losses(0.0, 0.0)) == 0.0
    assert relative_change(losses(0.0, 0.1)) == math.inf


def test_a_zero_base_loss_passes_when_the_adapter_is_as_good_and_fails_when_worse():
    assert judge(Gate(), losses(0.0, 0.0), losses(0.0, 0.0)).gate == "Passed"
    summary = judge(Gate(), losses(0.0, 0.0), losses(0.0, 0.1))
    assert summary.gate == "Failed"
    assert "FAILED" in summary.message


@pytest.mark.parametrize(
    ("mode", "verdict", "allowed"),
    [
        ("enforce", "Passed", True),
        ("enforce", "Failed", False),
        ("warn", "Warned", True),
        ("warn", "Passed", True),
        ("off", "Skipped", True),
    ],
)
def test_allows_publishing(mode, verdict, allowed):
    summary = judge(Gate(mode=mode), BETTER_TASK, STABLE_GENERAL).model_copy(update={"gate": verdict})
    assert allows_publishing(summary, Gate(mode=mode)) is allowed


def test_an_enforced_gate_without_a_summary_does_not_publish():
    assert allows_publishing(None, Gate(mode="enforce")) is False
    assert allows_publishing(None, Gate(mode="warn")) is True


# -- the operator's verdict: the numbers judged again, the trainer's words ignored ------------------


def test_a_manipulated_verdict_is_replaced_by_the_one_the_numbers_give():
    claimed = EvaluationSummary(task=WORSE_TASK, general=STABLE_GENERAL, gate="Passed", message="all good")
    decided = verdict_from_numbers(Gate(), claimed)
    assert decided == judge(Gate(), WORSE_TASK, STABLE_GENERAL)
    assert decided.gate == "Failed" and "all good" not in decided.message
    assert allows_publishing(decided, Gate()) is False


def test_a_verdict_without_numbers_fails_an_enforced_gate_and_says_they_are_missing():
    decided = verdict_from_numbers(Gate(), EvaluationSummary(gate="Passed"))
    assert decided.gate == "Failed"
    assert "task loss not measured" in decided.message and "general loss not measured" in decided.message


def test_a_failed_verdict_on_good_numbers_passes():
    claimed = EvaluationSummary(task=BETTER_TASK, general=STABLE_GENERAL, gate="Failed")
    assert verdict_from_numbers(Gate(), claimed).gate == "Passed"


def test_the_verdict_follows_the_jobs_gate_not_the_trainers():
    claimed = EvaluationSummary(task=WORSE_TASK, general=STABLE_GENERAL, gate="Skipped", message="gate is off")
    assert verdict_from_numbers(Gate(mode="warn"), claimed).gate == "Warned"
    assert verdict_from_numbers(Gate(mode="off"), claimed).gate == "Skipped"


def test_no_evaluation_stays_none():
    assert verdict_from_numbers(Gate(), None) is None
