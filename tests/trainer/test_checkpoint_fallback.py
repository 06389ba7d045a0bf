"""A damaged latest checkpoint runs no code: the run resumes from the previous one, says so, and finishes."""

from __future__ import annotations

import pytest
from finetune_core.api import CheckpointFallback
from finetune_trainer.errors import Preempted
from finetune_trainer.report import TrainingHooks
from finetune_trainer.run import run
from test_checkpoint_seal import hostile_pickle, reseal
from test_resume import LORA, TOTAL_STEPS, TRAINING, SigtermAfterStep, assert_same_weights, weights_of
from trainer_data import checkpoints_dir

pytestmark = pytest.mark.trainer


class StartReports(TrainingHooks):
    """Keeps the report the run starts with (what the operator is told first)."""

    def __init__(self):
        self.starting = []

    def on_stage(self, progress):
        if progress.stage == "starting":
            self.starting.append(progress)


@pytest.fixture(autouse=True)
def _several_micro_batches_per_step(monkeypatch):
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "64")


def interrupted_at_eight(make_job, name: str):
    """A job stopped after step 8: sealed checkpoints at steps 4 and 8."""
    config = make_job(name=name, method=LORA, training=TRAINING)
    with pytest.raises(Preempted):
        run(config, hooks=[SigtermAfterStep(8)])
    assert sorted(p.name for p in checkpoints_dir(config).iterdir() if p.is_dir()) == ["step-4", "step-8"]
    return config


def resumed(config):
    hooks = StartReports()
    report = run(config, hooks=[hooks])
    (starting,) = hooks.starting
    return report, starting


def test_a_tampered_checkpoint_does_not_run_and_the_run_falls_back_to_the_previous_one(make_job, trainer_env):
    straight = make_job(name="straight", method=LORA, training=TRAINING)
    run(straight)
    config = interrupted_at_eight(make_job, "tampered")
    created = trainer_env / "code-ran"
    replaced = checkpoints_dir(config) / "step-8" / "optimizer.safetensors"
    replaced.write_bytes(hostile_pickle(trainer_env, created, size=replaced.stat().st_size))  # same size, other bytes

    report, starting = resumed(config)

    assert not created.exists()
    assert starting.checkpoint_fallback == CheckpointFallback(from_step=8, to_step=4, reason="digest_mismatch")
    assert starting.resumed_from_step == report.resumed_from_step == 4
    assert report.steps == TOTAL_STEPS
    # Resuming from the older checkpoint is as exact as from the newest.
    assert_same_weights(weights_of(straight), weights_of(config))


def test_a_tampered_checkpoint_sealed_again_does_not_run_either(make_job, trainer_env):
    """A writer who rewrites the seal too: digests match, the file is a pickle, it is unreadable, never run."""
    config = interrupted_at_eight(make_job, "resealed")
    created = trainer_env / "code-ran"
    reseal(checkpoints_dir(config) / "step-8", "optimizer.safetensors", hostile_pickle(trainer_env, created))

    report, starting = resumed(config)

    assert not created.exists()
    assert starting.checkpoint_fallback == CheckpointFallback(from_step=8, to_step=4, reason="unreadable")
    assert report.resumed_from_step == 4 and report.steps == TOTAL_STEPS


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.unlink(), "file_missing"),
        (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "size_mismatch"),
    ],
    ids=["missing", "truncated"],
)
def test_a_sealed_checkpoint_with_a_missing_or_truncated_file_falls_back(make_job, damage, reason):
    config = interrupted_at_eight(make_job, f"damaged-{reason}")
    damage(checkpoints_dir(config) / "step-8" / "weights.safetensors")

    report, starting = resumed(config)

    assert starting.checkpoint_fallback == CheckpointFallback(from_step=8, to_step=4, reason=reason)
    assert report.resumed_from_step == 4 and report.steps == TOTAL_STEPS


def test_when_no_checkpoint_is_usable_the_run_starts_over_and_says_so(make_job):
    config = interrupted_at_eight(make_job, "nothing-usable")
    for step in (4, 8):
        (checkpoints_dir(config) / f"step-{step}" / "trainer_state.json").write_text("{}")

    report, starting = resumed(config)

    assert starting.checkpoint_fallback == CheckpointFallback(from_step=8, to_step=None, reason="size_mismatch")
    assert starting.resumed_from_step is None and report.resumed_from_step is None
    assert report.steps == TOTAL_STEPS
