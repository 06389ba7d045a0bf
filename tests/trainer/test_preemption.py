"""Preemption of a real trainer process: SIGTERM mid-run saves a complete checkpoint and exits 75; a rerun resumes.

Also through the container's entrypoint (finetune_trainer.launch wrapping a launcher), which must
deliver the signal to the trainer and keep its exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from finetune_core.api import ExitCode, TrainingReport
from trainer_data import artifact_dir, checkpoints_dir

pytestmark = pytest.mark.trainer

TOTAL_STEPS = 300
STOP_AT = 120  # steps: well after the first checkpoint, well before the end


def start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[dict]]:
    """Start ``command``; its JSON log lines are collected into the returned list as they come."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[dict] = []

    def collect() -> None:
        for line in process.stderr:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"msg": "text", "text": line})

    threading.Thread(target=collect, daemon=True).start()
    return process, lines


def wait_for_step(process: subprocess.Popen, lines: list[dict], step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.get("msg") == "step" and line.get("step", 0) >= step for line in list(lines)):
            return
        assert process.poll() is None, f"the trainer ended early: {lines[-5:]}"
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s: {lines[-5:]}")


def complete_checkpoints(config: Path) -> list[int]:
    return sorted(
        int(path.name.removeprefix("step-"))
        for path in checkpoints_dir(config).glob("step-*")
        if (path / "complete.json").is_file()
    )


@pytest.fixture
def long_job(make_job):
    return make_job(training={"maxSteps": TOTAL_STEPS, "checkpointEverySteps": 50, "batchTokens": 128})


@pytest.fixture
def env(trainer_env) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_EXIT", "RANK", "WORLD_SIZE"))}
    return {**clean, "FINETUNE_LOG_LEVEL": "INFO"}


def trainer_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "finetune_trainer", "--config", str(config)]


def assert_preempted_then_resumed(config: Path, process, lines, env) -> None:
    assert process.wait(timeout=120) == ExitCode.PREEMPTED, lines[-5:]
    stopped = [line for line in lines if line.get("msg") == "preempted"]
    assert stopped, lines[-5:]
    step = stopped[0]["step"]
    assert STOP_AT <= step < TOTAL_STEPS
    assert complete_checkpoints(config)[-1] == step

    rerun = subprocess.run(trainer_command(config), capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
    report = TrainingReport.model_validate_json((artifact_dir(config) / "training_report.json").read_text())
    assert report.resumed_from_step == step
    assert report.steps == TOTAL_STEPS


def test_sigterm_saves_a_checkpoint_exits_preempted_and_a_rerun_resumes(long_job, env):
    process, lines = start(trainer_command(long_job), env)
    wait_for_step(process, lines, STOP_AT)
    process.send_signal(signal.SIGTERM)
    assert_preempted_then_resumed(long_job, process, lines, env)


# accelerate launch runs one process itself (and loses its exit code); with several it becomes torch
# elastic (torchrun), whose agent kills workers 30 s after a SIGTERM of its own.
LAUNCHERS = {
    "accelerate": [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        *("--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("-m", "finetune_trainer"),
    ],
    # --standalone: a rendezvous on a free port, not the fixed 29500 another test's ranks may hold.
    "torchrun": [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"),
        *("-m", "finetune_trainer"),
    ],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_entrypoint_delivers_sigterm_through_the_launcher_and_keeps_the_exit_code(long_job, env, launcher):
    command = [sys.executable, "-m", "finetune_trainer.launch", "--", *LAUNCHERS[launcher], "--config", str(long_job)]
    process, lines = start(command, env)
    wait_for_step(process, lines, STOP_AT)
    process.send_signal(signal.SIGTERM)
    assert_preempted_then_resumed(long_job, process, lines, env)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_entrypoint_keeps_a_configuration_error(make_job, env, launcher):
    config = make_job(method={"type": "qlora", "lora": {"rank": 8}})
    result = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.launch", "--", *LAUNCHERS[launcher], "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr[-2000:]
