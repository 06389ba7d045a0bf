"""The entry point's contract: exit codes and one-line reasons a user can act on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from finetune_core.api import ExitCode
from finetune_trainer.__main__ import main
from trainer_data import sft_rows

pytestmark = pytest.mark.trainer


def termination_message(trainer_env) -> str:
    return (trainer_env / "termination-log").read_text(encoding="utf-8")


def test_help_describes_the_command_and_its_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "--config" in result.stdout and "75 preempted" in result.stdout


def test_qlora_on_cpu_exits_with_the_configuration_code_and_says_why(make_job, trainer_env):
    config = make_job(method={"type": "qlora", "lora": {"rank": 8}})
    result = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={**_clean_env(), "FINETUNE_TERMINATION_LOG": str(trainer_env / "termination-log")},
    )
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    message = termination_message(trainer_env)
    assert "qlora" in message and "GPU" in message and "method.type lora" in message
    last_line = json.loads(result.stderr.strip().splitlines()[-1])
    assert last_line["msg"] == "stopped" and last_line["exit_code"] == 78


def test_an_invalid_configuration_names_the_field(make_job, trainer_env):
    config = make_job()
    raw = json.loads(config.read_text())
    raw["training"]["learningRate"] = -1
    config.write_text(json.dumps(raw))
    assert main(["--config", str(config)]) == ExitCode.CONFIG_ERROR
    assert "training.learningRate" in termination_message(trainer_env)


def test_a_configuration_that_is_not_json_names_the_line(trainer_env):
    config = trainer_env / "config.json"
    config.write_text('{\n  "job": {\n  oops\n}')
    assert main(["--config", str(config)]) == ExitCode.CONFIG_ERROR
    assert f"{config}:3" in termination_message(trainer_env)


def test_a_missing_model_is_a_configuration_error(make_job, trainer_env):
    config = make_job(model_uri=f"file://{trainer_env}/no-such-model")
    assert main(["--config", str(config)]) == ExitCode.CONFIG_ERROR
    assert "model.uri" in termination_message(trainer_env)


def test_too_many_invalid_rows_exit_with_the_data_code_and_name_file_and_line(make_job, trainer_env):
    rows = sft_rows(20) + ["{not json"] * 5 + [{"prompt": 3, "completion": "x"}] * 5
    config = make_job(train_rows=rows, data={"maxInvalidFraction": 0.1})
    assert main(["--config", str(config)]) == ExitCode.DATA_ERROR
    message = termination_message(trainer_env)
    assert "train.jsonl:21" in message


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_EXIT", "RANK", "WORLD_SIZE"))}
