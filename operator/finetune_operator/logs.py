"""Logging: text for people at a terminal, JSON lines (finetune_core.log's format) for log pipelines."""

from __future__ import annotations

import logging

from finetune_core.log import JsonFormatter


def configure(log_format: str, level: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs every watch event at DEBUG and its own activity at INFO; ours is enough at INFO.
    logging.getLogger("kopf").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("urllib3").setLevel(logging.WARNING)
