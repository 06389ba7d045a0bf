"""Exit codes of the trainer: an API between the trainer, the podFailurePolicy and status messages."""

from __future__ import annotations

import pytest
from finetune_core.api import ExitCode, describe_exit_code


@pytest.mark.parametrize(
    ("code", "retriable"),
    [
        (ExitCode.SUCCESS, True),
        (ExitCode.FAILURE, True),
        (ExitCode.PREEMPTED, True),
        (ExitCode.DATA_ERROR, False),
        (ExitCode.CONFIG_ERROR, False),
        (ExitCode.GATE_FAILED, False),
    ],
)
def test_only_configuration_data_and_gate_failures_are_not_retried(code, retriable):
    assert code.retriable is retriable


def test_the_values_follow_sysexits_and_stay_clear_of_signal_codes():
    assert (ExitCode.DATA_ERROR, ExitCode.PREEMPTED, ExitCode.CONFIG_ERROR) == (65, 75, 78)
    assert all(code < 128 for code in ExitCode)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0, "success"),
        (1, "unexpected failure (retried)"),
        (65, "data error (not retried: fix the data)"),
        (75, "preempted after saving a checkpoint"),
        (78, "configuration error (not retried: fix the FineTuneJob)"),
        (79, "the evaluation gate failed"),
    ],
)
def test_our_codes_are_described_by_their_meaning(code, words):
    assert words in describe_exit_code(code)


@pytest.mark.parametrize(
    ("code", "description"),
    [
        (137, "killed by signal 9 (SIGKILL, often the out-of-memory killer)"),
        (143, "killed by signal 15 (SIGTERM)"),
        (134, "killed by signal 6 (signal)"),
    ],
)
def test_signal_exits_name_the_signal(code, description):
    assert describe_exit_code(code) == description


@pytest.mark.parametrize("code", [2, 42, 127, 128])
def test_unknown_codes_are_unexpected_failures(code):
    assert describe_exit_code(code) == "unexpected failure (retried)"


def test_every_code_has_a_meaning():
    for code in ExitCode:
        assert code.meaning
