"""The trainer's failures, each tied to the exit code the Job's podFailurePolicy acts on.

A user can fix a ConfigError (the FineTuneJob) or a DataError (the data); retrying either wastes
GPUs, so their exit codes are not retried, and neither is GateFailed (training again on the same
data gives the same verdict). Preempted means a checkpoint was saved and a retry
resumes from it. Anything else is a bug or an infrastructure fault: exit 1, retried.
"""

from __future__ import annotations

from finetune_core.api import ExitCode


class TrainerError(Exception):
    """A failure with a message for the user and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(TrainerError):
    """The configuration cannot work: the message names the field and says what to change."""

    exit_code = ExitCode.CONFIG_ERROR


class DataError(TrainerError):
    """The data is unusable: the message names the source (file:line where known) and the problem.

    ``origins`` lists the "file:line" of the invalid rows found, when there are some: the preflight
    reports them on their own, as data the operator can check, instead of as free text.
    """

    exit_code = ExitCode.DATA_ERROR

    def __init__(self, message: str, origins: list[str] | None = None) -> None:
        super().__init__(message)
        self.origins = list(origins or [])


class GateFailed(TrainerError):
    """The enforced evaluation gate refused the trained model: it is stored for inspection, never published."""

    exit_code = ExitCode.GATE_FAILED


class Preempted(TrainerError):
    """SIGTERM arrived; raised after the checkpoint (if any progress was made) is complete."""

    exit_code = ExitCode.PREEMPTED


def exit_code_of(error: BaseException) -> ExitCode:
    """The exit code for any exception; the data pipeline's errors are recognised by their exit_code."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        try:
            return ExitCode(code)
        except ValueError:
            return ExitCode.FAILURE
    return ExitCode.FAILURE
