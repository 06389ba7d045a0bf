"""Two trainer processes (torchrun, gloo on the CPU) through the container's entrypoint.

The ranks split every step's micro-batches and every evaluation; a preemption stops both at the
same step, each saves its generators, and the resumed pair ends with the weights of a pair that
was never interrupted. Evaluation reduced over two ranks gives the numbers of one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from finetune_core.api import ExitCode, TrainingReport
from finetune_trainer.run import run
from safetensors.torch import load_file
from test_checkpoint_seal import reseal
from test_preemption import start, wait_for_step
from trainer_data import artifact_dir, checkpoints_dir

pytestmark = pytest.mark.trainer

TRAINING = {"maxSteps": 60, "checkpointEverySteps": 20, "batchTokens": 256, "learningRate": 5e-3}
LORA = {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1}}


def two_ranks(config) -> list[str]:
    # --standalone: the rendezvous on a free port, so that two-rank runs of parallel test workers never meet on
    # torchrun's fixed default (29500).
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["-m", "finetune_trainer"]
    return [sys.executable, "-m", "finetune_trainer.launch", "--", *launcher, "--config", str(config)]


@pytest.fixture
def env(trainer_env) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_EXIT", "RANK", "WORLD_SIZE"))}
    return {**clean, "OMP_NUM_THREADS": "1", "FINETUNE_MICRO_BATCH_TOKENS": "64"}


def report_of(config) -> TrainingReport:
    return TrainingReport.model_validate_json((artifact_dir(config) / "training_report.json").read_text())


def test_two_ranks_preempted_and_resumed_match_two_ranks_uninterrupted(make_job, env, monkeypatch):
    straight = make_job(name="straight", method=LORA, training=TRAINING)
    result = subprocess.run(two_ranks(straight), capture_output=True, text=True, env=env, check=False)
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]

    interrupted = make_job(name="interrupted", method=LORA, training=TRAINING)
    process, lines = start(two_ranks(interrupted), env)
    wait_for_step(process, lines, 30)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == ExitCode.PREEMPTED, lines[-5:]
    stopped_at = {line["rank"]: line["step"] for line in lines if line.get("msg") == "preempted"}
    assert set(stopped_at) == {0, 1} and len(set(stopped_at.values())) == 1
    step = stopped_at[0]
    saved = checkpoints_dir(interrupted) / f"step-{step}"
    assert {"rng-rank-0.safetensors", "rng-rank-1.safetensors", "complete.json"} <= {p.name for p in saved.iterdir()}

    resumed = subprocess.run(two_ranks(interrupted), capture_output=True, text=True, env=env, check=False)
    assert resumed.returncode == ExitCode.SUCCESS, resumed.stderr[-3000:]

    assert report_of(interrupted).resumed_from_step == step
    assert report_of(straight).device["processes"] == 2
    first = load_file(artifact_dir(straight) / "adapter_model.safetensors")
    second = load_file(artifact_dir(interrupted) / "adapter_model.safetensors")
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6, rtol=0), name

    # The evaluation reduced over two ranks measures what one process measures.
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "64")
    single = run(make_job(name="single", method=LORA, training={**TRAINING, "maxSteps": 1}))
    two = report_of(straight).evaluation
    assert two.task.base_loss == pytest.approx(single.evaluation.task.base_loss, abs=1e-5)
    assert two.general.base_loss == pytest.approx(single.evaluation.general.base_loss, abs=1e-5)


def test_a_checkpoint_only_one_rank_cannot_read_is_skipped_by_both(make_job, env):
    """Rank 1's generators are resealed as garbage: rank 0 reads all it needs, yet both ranks fall back together."""
    config = make_job(name="one-rank-damaged", method=LORA, training=TRAINING)
    process, lines = start(two_ranks(config), env)
    wait_for_step(process, lines, 30)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == ExitCode.PREEMPTED, lines[-5:]
    step = next(line["step"] for line in lines if line.get("msg") == "preempted")
    reseal(checkpoints_dir(config) / f"step-{step}", "rng-rank-1.safetensors", b"not a state file")

    process, lines = start(two_ranks(config), env)
    assert process.wait(timeout=300) == ExitCode.SUCCESS, lines[-5:]

    fallbacks = {line["rank"]: line for line in lines if line.get("msg") == "checkpoint_fallback"}
    assert set(fallbacks) == {0, 1}
    assert {(f["from_step"], f["to_step"], f["reason"]) for f in fallbacks.values()} == {(step, 20, "unreadable")}
    assert report_of(config).resumed_from_step == 20
