"""Exit codes of the trainer: an API between the trainer and the Job's podFailurePolicy.

Values follow sysexits(3) where one fits, and stay clear of 128+N, which a shell or the
container runtime reports for a process killed by signal N.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1  # anything unexpected: retried (bounded by spec.backoffLimit)
    DATA_ERROR = 65  # EX_DATAERR: the data is unusable (too many invalid rows, empty): not retried
    PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint: retried, resumes
    CONFIG_ERROR = 78  # EX_CONFIG: the configuration cannot work (QLoRA on CPU, missing template...): not retried
    GATE_FAILED = 79  # trained, but the enforced evaluation gate refused the result: not retried, not published

    @property
    def retriable(self) -> bool:
        return self not in (ExitCode.DATA_ERROR, ExitCode.CONFIG_ERROR, ExitCode.GATE_FAILED)

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.SUCCESS: "success",
    ExitCode.FAILURE: "unexpected failure (retried)",
    ExitCode.DATA_ERROR: "data error (not retried: fix the data)",
    ExitCode.PREEMPTED: "preempted after saving a checkpoint (retried, resumes from it)",
    ExitCode.CONFIG_ERROR: "configuration error (not retried: fix the FineTuneJob)",
    ExitCode.GATE_FAILED: "the evaluation gate failed (not retried; the adapter is stored but not published)",
}


def describe_exit_code(code: int) -> str:
    """A human description of any container exit code, ours or a signal's."""
    try:
        return ExitCode(code).meaning
    except ValueError:
        pass
    if code > 128:
        signal_number = code - 128
        known = {9: "SIGKILL, often the out-of-memory killer", 15: "SIGTERM"}
        return f"killed by signal {signal_number} ({known.get(signal_number, 'signal')})"
    return "unexpected failure (retried)"
