"""Checkpoints are atomic and pruned; artifacts are immutable."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_core.api import FinalSummary, TrainingReport
from finetune_trainer.artifact import ArtifactTarget, publish
from finetune_trainer.checkpoint import MARKER, Checkpointer
from finetune_trainer.distributed import Distributed
from finetune_trainer.errors import ConfigError
from finetune_trainer.run import run
from finetune_trainer.state import TrainState, capture_rng
from finetune_trainer.storage import open_location
from trainer_data import artifact_dir

pytestmark = pytest.mark.trainer


@pytest.fixture
def dist(trainer_env):
    from accelerate import Accelerator

    return Distributed(Accelerator(cpu=True))


@pytest.fixture
def parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scheduler.step()
    return model, optimizer, scheduler


def save(checkpointer, parts, step, rng=None):
    model, optimizer, scheduler = parts
    state = TrainState(step=step, epoch=1, step_in_epoch=step)
    return checkpointer.save(state, model, optimizer, scheduler, rng or capture_rng(), None)


def test_only_the_newest_checkpoints_are_kept(trainer_env, dist, parts):
    checkpointer = Checkpointer(open_location(f"file://{trainer_env}/ckpt"), keep=2, dist=dist)
    for step in (10, 20, 30):
        save(checkpointer, parts, step)
    assert [c.step for c in checkpointer.complete()] == [20, 30]
    assert sorted(p.name for p in (trainer_env / "ckpt").iterdir()) == ["step-20", "step-30"]


def test_a_checkpoint_without_its_marker_is_not_taken(trainer_env, dist, parts):
    checkpointer = Checkpointer(open_location(f"file://{trainer_env}/ckpt"), keep=3, dist=dist)
    save(checkpointer, parts, 10)
    save(checkpointer, parts, 20)
    (trainer_env / "ckpt" / "step-20" / MARKER).unlink()  # as if the writer died before sealing
    assert checkpointer.latest().step == 10


def test_a_leftover_partial_checkpoint_is_replaced(trainer_env, dist, parts):
    location = open_location(f"file://{trainer_env}/ckpt")
    stale = location.staging_dir("step-10")
    stale.mkdir(parents=True)
    (stale / "garbage").write_text("from a writer that died")
    save(Checkpointer(location, keep=2, dist=dist), parts, 10)
    assert not (trainer_env / "ckpt" / "step-10" / "garbage").exists()
    assert not stale.exists()


def test_restoring_brings_back_weights_optimizer_schedule_and_position(trainer_env, dist, parts):
    model, optimizer, scheduler = parts
    checkpointer = Checkpointer(open_location(f"file://{trainer_env}/ckpt"), keep=2, dist=dist)
    generators = capture_rng()
    save(checkpointer, parts, 7, generators)
    expected_weight = model.weight.detach().clone()
    expected_moment = optimizer.state[model.weight]["exp_avg"].clone()

    fresh = torch.nn.Linear(4, 3)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0 / (step + 1))
    state, rng = checkpointer.restore(checkpointer.latest(), fresh, fresh_optimizer, fresh_scheduler, None)

    assert (state.step, state.epoch, state.step_in_epoch, state.resumed_from_step) == (7, 1, 7, 7)
    assert torch.equal(fresh.weight, expected_weight)
    assert torch.equal(fresh_optimizer.state[fresh.weight]["exp_avg"], expected_moment)
    assert fresh_scheduler.last_epoch == scheduler.last_epoch
    assert torch.equal(rng["torch"], generators["torch"])
    assert rng["python"] == generators["python"]


# ---- artifacts


def staged(target: ArtifactTarget, content: bytes):
    staging = target.staging()
    (staging / "adapter_model.safetensors").write_bytes(content)
    return staging


def report() -> TrainingReport:
    return TrainingReport(job={"namespace": "team", "name": "job", "uid": "u"}, config_sha256="0" * 64)


def test_publishing_writes_the_manifest_last_and_is_idempotent(trainer_env):
    target = ArtifactTarget.of(f"file://{trainer_env}/artifacts/adapter/v1")
    first = publish(target, staged(target, b"weights"), report())
    again = publish(target, staged(target, b"weights"), report())
    assert first == again
    manifest = json.loads((trainer_env / "artifacts" / "adapter" / "v1" / "manifest.json").read_text())
    assert manifest["digest"] == first.digest
    assert {f["path"] for f in manifest["files"]} == {"adapter_model.safetensors", "training_report.json"}


def test_a_published_artifact_is_never_overwritten(trainer_env):
    target = ArtifactTarget.of(f"file://{trainer_env}/artifacts/adapter/v1")
    publish(target, staged(target, b"weights"), report())
    with pytest.raises(ConfigError, match="immutable"):
        publish(target, staged(target, b"other weights"), report())
    assert (trainer_env / "artifacts" / "adapter" / "v1" / "adapter_model.safetensors").read_bytes() == b"weights"


def test_an_incomplete_artifact_directory_is_replaced(trainer_env):
    leftover = trainer_env / "artifacts" / "adapter" / "v1"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half an upload")
    target = ArtifactTarget.of(f"file://{trainer_env}/artifacts/adapter/v1")
    publish(target, staged(target, b"weights"), report())
    assert (leftover / "adapter_model.safetensors").read_bytes() == b"weights"


def test_a_retry_after_publishing_finds_the_artifact_and_is_done(make_job, trainer_env):
    config = make_job(training={"maxSteps": 2})
    first = run(config)
    termination_log = trainer_env / "termination-log"
    summary = FinalSummary.model_validate_json(termination_log.read_text())
    assert summary.artifact == first.artifact and summary.evaluation == first.evaluation
    termination_log.unlink()
    assert run(config) is None
    assert json.loads((artifact_dir(config) / "manifest.json").read_text())["digest"] == first.artifact.digest
    # The retry leaves the same summary for the operator: its pod is the one the operator sees.
    assert FinalSummary.model_validate_json(termination_log.read_text()) == summary
