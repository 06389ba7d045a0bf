"""One JSON log line format for the operator and the trainer, so one pipeline query reads both.

Each record is one JSON object on one line:

    {"time": "2026-12-06T23:59:01.250Z", "level": "info", "logger": "finetune_trainer",
     "msg": "checkpoint_saved", "step": 200, "uri": "s3://bucket/job/checkpoints/step-200"}

- ``time``: RFC 3339, UTC, milliseconds.
- ``level``: debug, info, warning, error or critical, lower case as the cluster's Go components (zap,
  controller-runtime) and kopf's own JSON formatter write it.
- ``logger``: the Python logger's name (finetune_operator..., finetune_trainer, kopf, a library).
- ``msg``: the message: an event name for the trainer (``checkpoint_saved``), a sentence for the
  operator. ``msg`` is the key of Kubernetes' own structured logs (klog's JSON format, controller-runtime),
  so a cluster's log pipeline already takes it as the line's text; and unlike ``message`` it is no field
  of our reports, whose dumps (an evaluation summary, a refused report) are logged as fields.
- the record's fields (``extra={"fields": {...}}``) and the process's context (the trainer's rank), at
  the top level: a field never replaces one of the keys above.
- ``object``: the Kubernetes object a kopf handler logged about (kind, namespace, name), where kopf says.
- ``traceback``: the formatted exception, where there is one.

JSON has no NaN or Infinity: a non-finite float (a diverged loss is still worth logging) is written as a
string, a numpy or torch scalar as its number, anything else unknown as its ``str``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

RESERVED_KEYS = ("time", "level", "logger", "msg", "object", "traceback")


class JsonFormatter(logging.Formatter):
    """Records as JSON lines in the format above. ``context`` returns fields every line of this process
    carries (asked per record: a launcher may set them after logging is configured)."""

    def __init__(self, context: Callable[[], Mapping[str, Any]] | None = None):
        super().__init__()
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        reference = getattr(record, "k8s_ref", None)
        if isinstance(reference, Mapping):
            line["object"] = {key: reference.get(key) for key in ("kind", "namespace", "name") if reference.get(key)}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        extra = {**(self._context() if self._context else {}), **(getattr(record, "fields", None) or {})}
        for key, value in extra.items():
            if key not in RESERVED_KEYS:
                line[key] = _finite(value)
        return json.dumps(line, default=_json_default, allow_nan=False)


def _finite(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return _finite(value.item())
    return str(value)
