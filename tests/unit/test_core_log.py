"""One JSON log line format for the operator and the trainer: the same keys from both sides."""

from __future__ import annotations

import io
import json
import logging

import pytest
from finetune_core.log import JsonFormatter
from finetune_operator import logs as operator_logs
from finetune_trainer import log as trainer_log


@pytest.fixture
def restore_logging():
    root, trainer = logging.getLogger(), logging.getLogger("finetune_trainer")
    saved = (root.handlers[:], root.level, trainer.handlers[:], trainer.level, trainer.propagate)
    yield
    root.handlers[:], level, trainer.handlers[:], trainer.level, trainer.propagate = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def captured(handler: logging.Handler) -> io.StringIO:
    stream = io.StringIO()
    handler.setStream(stream)
    return stream


def test_the_operator_and_the_trainer_write_the_same_keys(restore_logging, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    operator_logs.configure("json", "INFO")
    operator_stream = captured(logging.getLogger().handlers[0])
    logging.getLogger("finetune_operator.reconcile").info("job %s/%s started", "team", "bot")

    trainer_log.configure("INFO")
    trainer_stream = captured(logging.getLogger("finetune_trainer").handlers[0])
    trainer_log.info("checkpoint_saved", step=200, uri="s3://bucket/job/checkpoints/step-200")

    operator_line = json.loads(operator_stream.getvalue())
    trainer_line = json.loads(trainer_stream.getvalue())
    assert list(operator_line) == ["time", "level", "logger", "msg"]
    assert list(trainer_line) == ["time", "level", "logger", "msg", "step", "uri"]
    assert operator_line["msg"] == "job team/bot started" and operator_line["level"] == "info"
    assert trainer_line["msg"] == "checkpoint_saved" and trainer_line["level"] == "info"
    assert trainer_line["logger"] == "finetune_trainer" and trainer_line["step"] == 200
    assert trainer_line["time"].endswith("Z") and trainer_line["time"][:4] == operator_line["time"][:4]


def record(message: str = "step", fields: dict | None = None, **attributes) -> logging.LogRecord:
    made = logging.LogRecord("finetune_trainer", logging.WARNING, __file__, 1, message, (), None)
    made.fields = fields or {}
    made.__dict__.update(attributes)
    return made


def test_a_field_never_replaces_the_lines_own_keys():
    line = json.loads(JsonFormatter().format(record(fields={"msg": "forged", "level": "debug", "message": "kept"})))
    assert line["msg"] == "step" and line["level"] == "warning" and line["message"] == "kept"


def test_numbers_json_cannot_hold_are_written_as_strings():
    line = json.loads(JsonFormatter().format(record(fields={"loss": float("nan"), "norm": float("inf")})))
    assert (line["loss"], line["norm"]) == ("nan", "inf")


def test_the_process_context_is_on_every_line_and_a_kopf_object_is_named():
    formatter = JsonFormatter(context=lambda: {"rank": 3})
    reference = {"kind": "FineTuneJob", "namespace": "team", "name": "bot", "uid": "u-1"}
    line = json.loads(formatter.format(record(k8s_ref=reference)))
    assert line["rank"] == 3
    assert line["object"] == {"kind": "FineTuneJob", "namespace": "team", "name": "bot"}


def test_an_exception_is_its_traceback_on_the_same_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        made = record()
        made.exc_info = sys.exc_info()
    text = JsonFormatter().format(made)
    assert "\n" not in text and "RuntimeError: boom" in json.loads(text)["traceback"]
