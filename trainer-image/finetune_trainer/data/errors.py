"""Errors a user can cause with their data or configuration, each mapped to an exit code of the api.

The trainer's entry point turns them into its exit status, so the Job's podFailurePolicy does not
retry what a retry cannot fix. Their messages are for people: they name the source, the field or
the file:line, and say what to change.
"""

from __future__ import annotations

from finetune_operator.api import ExitCode


class DataError(Exception):
    """The data cannot be trained on: empty, unreadable, or too many invalid rows."""

    exit_code = ExitCode.DATA_ERROR


class ConfigError(Exception):
    """The configuration cannot work with this data or tokenizer (for example a chat format without a template)."""

    exit_code = ExitCode.CONFIG_ERROR
