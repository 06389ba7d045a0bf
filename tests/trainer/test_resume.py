"""Resumption is exact: interrupted at step k and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from finetune_trainer import loop
from finetune_trainer.errors import Preempted
from finetune_trainer.report import TrainingHooks
from finetune_trainer.run import run
from safetensors.torch import load_file
from trainer_data import artifact_dir, checkpoints_dir, sft_rows

pytestmark = pytest.mark.trainer

TOTAL_STEPS = 12
# Dropout draws from the generators, several micro-batches per step accumulate gradients: both must
# be restored exactly for the weights to match.
LORA = {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1}}
TRAINING = {"maxSteps": TOTAL_STEPS, "checkpointEverySteps": 4, "learningRate": 5e-3, "warmupRatio": 0.2}


class SigtermAfterStep(TrainingHooks):
    """Sends this process SIGTERM right after step ``step``: what a preempted pod receives."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, metrics):
        if metrics.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _several_micro_batches_per_step(monkeypatch):
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "64")


def weights_of(config) -> dict[str, torch.Tensor]:
    directory = artifact_dir(config)
    name = "adapter_model.safetensors" if (directory / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(directory / name)


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6, rtol=0), name


@pytest.mark.parametrize("method", [LORA, {"type": "full"}], ids=["lora", "full"])
def test_interrupted_after_a_step_and_resumed_ends_with_the_same_weights(make_job, method):
    straight = make_job(name="straight", method=method, training=TRAINING)
    run(straight)

    interrupted = make_job(name="interrupted", method=method, training=TRAINING)
    with pytest.raises(Preempted):
        run(interrupted, hooks=[SigtermAfterStep(6)])
    assert sorted(p.name for p in checkpoints_dir(interrupted).iterdir() if p.is_dir()) == ["step-4", "step-6"]
    report = run(interrupted)

    assert report.resumed_from_step == 6
    assert report.steps == TOTAL_STEPS
    assert_same_weights(weights_of(straight), weights_of(interrupted))


def test_interrupted_inside_a_step_drops_it_and_repeats_it_exactly(make_job, monkeypatch):
    straight = make_job(name="straight", method=LORA, training=TRAINING)
    run(straight)

    interrupted = make_job(name="interrupted", method=LORA, training=TRAINING)
    collate = loop.collate
    calls = {"count": 0}

    def collate_then_signal(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 25:  # some micro-batch in the middle of a step after the first checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return collate(*args, **kwargs)

    monkeypatch.setattr(loop, "collate", collate_then_signal)
    with pytest.raises(Preempted):
        run(interrupted)
    monkeypatch.setattr(loop, "collate", collate)
    saved = json.loads((checkpoints_dir(interrupted) / "step-4" / "trainer_state.json").read_text())
    steps_done = max(int(p.name.removeprefix("step-")) for p in checkpoints_dir(interrupted).glob("step-*"))
    assert 4 < steps_done < TOTAL_STEPS and saved["step"] == 4

    report = run(interrupted)

    assert report.resumed_from_step == steps_done
    assert_same_weights(weights_of(straight), weights_of(interrupted))


def test_resumed_under_another_layout_the_epoch_trains_every_example_once(make_job, monkeypatch):
    """Resources changed while suspended: other micro-batches (or ranks) make another plan for the epoch."""
    training = {"epochs": 1, "maxSteps": None, "batchTokens": 256, "checkpointEverySteps": 2, "learningRate": 5e-3}
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "128")
    rows = sft_rows(160)
    straight = run(make_job(name="straight", method=LORA, training=training, train_rows=rows))
    assert straight.steps > 4

    interrupted = make_job(name="relaid", method=LORA, training=training, train_rows=rows)
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "64")
    with pytest.raises(Preempted):
        run(interrupted, hooks=[SigtermAfterStep(3)])
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "128")
    report = run(interrupted)

    assert report.resumed_from_step == 3
    # Real tokens per example do not depend on the layout: the same total means each example exactly once.
    assert report.tokens_seen == straight.tokens_seen
    assert abs(report.steps - straight.steps) <= 1


class SigtermOnStage(TrainingHooks):
    def __init__(self, stage: str):
        self.stage = stage

    def on_stage(self, progress):
        if progress.stage == self.stage:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_during_the_final_evaluation_keeps_the_training_and_a_retry_only_evaluates(make_job):
    config = make_job(name="late-stop", method=LORA, training=TRAINING)
    with pytest.raises(Preempted, match="evaluation"):
        run(config, hooks=[SigtermOnStage("evaluating")])
    assert f"step-{TOTAL_STEPS}" in {p.name for p in checkpoints_dir(config).iterdir()}
    report = run(config)
    assert report.resumed_from_step == TOTAL_STEPS and report.steps == TOTAL_STEPS
