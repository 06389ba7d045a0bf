"""Structured logging: one JSON object per line on stderr, in the format the operator writes too
(finetune_core.log): time, level, logger, the event name as ``msg``, the process's rank when it is one
of several, and the event's fields. Call sites pass facts as fields, never formatted sentences with
values buried in them:

    log.info("checkpoint_saved", step=200, uri="s3://bucket/job/checkpoints/step-200")
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from finetune_core.log import JsonFormatter

_LOGGER = logging.getLogger("finetune_trainer")

# Libraries that otherwise fill the log with per-request lines or with notes that do not apply to us
# (bitsandbytes warns on CPU about optional kernels it cannot download).
_QUIET_LIBRARIES = {
    "botocore": logging.WARNING,
    "boto3": logging.WARNING,
    "urllib3": logging.WARNING,
    "s3transfer": logging.WARNING,
    "httpx": logging.WARNING,
    "huggingface_hub": logging.WARNING,
    "filelock": logging.WARNING,
    "bitsandbytes": logging.ERROR,
}


def _rank() -> dict[str, int]:
    """The process's rank when it is one of several (read per line: the launcher sets it per process)."""
    rank = os.environ.get("RANK")
    if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1":
        return {"rank": int(rank)}
    return {}


def configure(level: str | None = None) -> None:
    """Send the trainer's log, and the warnings of the libraries it uses, to stderr as JSON lines; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(context=_rank))
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(level or os.environ.get("FINETUNE_LOG_LEVEL", "INFO").upper())
    _LOGGER.propagate = False
    root = logging.getLogger()
    # Replace only our own handler: others (a test runner's capture) keep working.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)] + [handler]
    root.setLevel(logging.WARNING)
    for name, library_level in _QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(True)  # Python warnings (deprecations of the libraries) as JSON lines too


def route_transformers_logging() -> None:
    """transformers prints through a handler of its own; send its warnings through ours instead."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.set_verbosity_warning()
    transformers_logging.disable_progress_bar()  # progress bars are not log lines


def _emit(level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
    _LOGGER.log(level, event, extra={"fields": fields}, exc_info=exc_info)


def debug(event: str, **fields: Any) -> None:
    _emit(logging.DEBUG, event, fields)


def info(event: str, **fields: Any) -> None:
    _emit(logging.INFO, event, fields)


def warning(event: str, **fields: Any) -> None:
    _emit(logging.WARNING, event, fields)


def error(event: str, exc_info: bool = False, **fields: Any) -> None:
    _emit(logging.ERROR, event, fields, exc_info=exc_info)
