"""The GPU check's own command, run on the CPU with every stage tiny, so that it cannot rot before a GPU comes.

It checks what the check records and concludes, never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_check import CPU, Check, Clock, StageTimeout, run_logged

REPO = Path(__file__).resolve().parents[2]


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.trainer
def test_every_stage_runs_tiny_on_the_cpu_and_the_summary_says_what_it_proved(tmp_path):
    out = tmp_path / "out"
    result = gpu_check("--cpu", "--out", str(out), "--work", str(tmp_path / "work"), timeout=900)

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert summary["mode"] == "cpu"
    assert stages["setup"]["status"] == "passed" and stages["setup"]["versions"]["gpu"] is None

    lora = stages["lora-resume"]
    assert lora["status"] == "passed"
    assert lora["interrupted"]["exit_code"] == 75
    assert CPU.stop_at <= lora["interrupted"]["preempted_at_step"] < CPU.lora_steps
    assert lora["resumed"]["resumed_from_step"] == lora["interrupted"]["preempted_at_step"]
    assert lora["resumed"]["steps"] == lora["straight"]["steps"] == CPU.lora_steps
    assert lora["resumed_vs_straight"]["bitwise_equal"] is True  # the CPU is deterministic: no excuse here
    assert "straight_vs_straight" not in lora
    assert lora["straight"]["tokens_per_second"] > 0 and lora["straight"]["eval_loss_trained"] > 0

    bench = stages["bench-1b"]
    assert bench["status"] == "passed" and bench["runs"]["ours"]["tokens_per_second"] > 0
    assert json.loads((out / "bench-1b.json").read_text())["suites"][0]["runs"]["ours"]["steps"] >= 2

    full = stages["full"]
    assert full["status"] == "passed" and full["run"]["steps"] == CPU.full_steps
    assert full["run"]["device"]["type"] == "cpu"

    assert stages["qlora"]["status"] == "skipped" and "CUDA" in stages["qlora"]["skipped"]
    assert "bench-8b" not in stages
    assert "lora-resume: passed" in result.stdout and "bitwise" in result.stdout
    assert (out / "gpu-check.log").read_text().count("[lora-resume] passed") == 1


def test_a_failed_setup_still_leaves_a_summary_and_fails_the_command(tmp_path):
    out = tmp_path / "out"
    result = gpu_check("--out", str(out), "--carry", str(tmp_path / "no-carry"), "--stages", "full", timeout=120)

    assert result.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["setup"]["status"] == "failed"
    assert "carry.json" in summary["stages"]["setup"]["error"]
    assert "full" not in summary["stages"]
    assert "setup failed" in result.stdout


def test_a_process_that_outruns_its_stage_is_ended_with_what_it_started(tmp_path):
    with (tmp_path / "log").open("w") as output:
        check = Check(CPU, tmp_path, tmp_path, {"PATH": "/usr/bin:/bin"}, output)
        program = "import subprocess, time; print(subprocess.Popen(['sleep', '300']).pid, flush=True); time.sleep(300)"
        with pytest.raises(StageTimeout, match="ran out of time"):
            run_logged([sys.executable, "-c", program], check, tmp_path / "sleep.log", Clock(3))
    grandchild = int((tmp_path / "sleep.log").read_text().splitlines()[-1])
    deadline = time.monotonic() + 30
    while alive(grandchild):
        assert time.monotonic() < deadline, "the stage's grandchild outlived its timeout"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # killed, and not yet reaped by whoever adopted it
