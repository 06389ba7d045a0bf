"""Training from the token store: the same run as from memory, resumable, shared by ranks.

Each comparison trains the same configuration with the store (the default) and without it
(FINETUNE_TOKEN_STORE=off, tokenizing in memory as before the store existed): the loss of every
step must be identical, since the examples, the plan and hence the batches are.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from finetune_core.api import ExitCode
from finetune_trainer.errors import Preempted
from finetune_trainer.run import run
from safetensors.torch import load_file
from test_distributed import two_ranks
from test_resume import SigtermAfterStep, assert_same_weights, weights_of
from trainer_data import artifact_dir, chat_rows, step_losses, text_rows

pytestmark = pytest.mark.trainer

LORA = {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1}}
TRAINING = {"maxSteps": 12, "checkpointEverySteps": 4, "learningRate": 5e-3}


def log_events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def stores(trainer_env) -> list[str]:
    root = trainer_env / "cache" / "token-stores"
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


@pytest.fixture(autouse=True)
def _several_micro_batches_per_step(monkeypatch):
    monkeypatch.setenv("FINETUNE_MICRO_BATCH_TOKENS", "64")


# Long documents (several sentences each) with a short maxSeqLength: each becomes several chunks.
LONG_TEXTS = [{"text": " ".join(row["text"] for row in text_rows(4, seed))} for seed in range(30)]


@pytest.mark.parametrize(
    ("objective", "rows", "max_seq_length"),
    [("sft", chat_rows(40), 64), ("pretrain", LONG_TEXTS, 32)],
    ids=["chat", "text"],
)
def test_training_from_the_store_has_the_loss_curve_of_training_from_memory(
    make_job, trainer_env, monkeypatch, objective, rows, max_seq_length
):
    training = {**TRAINING, "maxSeqLength": max_seq_length}
    monkeypatch.setenv("FINETUNE_TOKEN_STORE", "off")
    from_memory = make_job(name="memory", objective=objective, train_rows=rows, method=LORA, training=training)
    run(from_memory)
    assert stores(trainer_env) == []

    monkeypatch.delenv("FINETUNE_TOKEN_STORE")
    from_store = make_job(name="store", objective=objective, train_rows=rows, method=LORA, training=training)
    run(from_store)

    assert len(stores(trainer_env)) == 2  # the training data and the general data
    assert step_losses(from_store) == step_losses(from_memory)
    assert len(step_losses(from_store)) == TRAINING["maxSteps"]
    assert_same_weights(weights_of(from_memory), weights_of(from_store))


def test_a_resume_reads_the_store_the_first_attempt_built_and_ends_with_the_same_weights(make_job, trainer_env):
    rows = chat_rows(40)
    straight = make_job(name="straight", train_rows=rows, method=LORA, training=TRAINING)
    run(straight)

    interrupted = make_job(name="interrupted", train_rows=rows, method=LORA, training=TRAINING)
    with pytest.raises(Preempted):
        run(interrupted, hooks=[SigtermAfterStep(6)])
    built = {path: path.stat().st_mtime_ns for path in (trainer_env / "cache" / "token-stores").rglob("ids.bin")}
    report = run(interrupted)

    assert report.resumed_from_step == 6
    assert {path: path.stat().st_mtime_ns for path in built} == built  # not rebuilt
    assert len(stores(trainer_env)) == 4  # each job's training and general data, built once
    assert_same_weights(weights_of(straight), weights_of(interrupted))


def test_two_ranks_read_one_store_and_train_as_from_memory(make_job, trainer_env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_EXIT", "RANK", "WORLD_SIZE"))}
    env = {**base, "OMP_NUM_THREADS": "1", "FINETUNE_MICRO_BATCH_TOKENS": "64"}
    training = {**TRAINING, "maxSteps": 6, "batchTokens": 256}
    rows = chat_rows(40)

    weights, built_by = {}, {}
    for name, store in (("memory", "off"), ("store", "on")):
        config = make_job(name=name, train_rows=rows, method=LORA, training=training)
        result = subprocess.run(
            two_ranks(config), capture_output=True, text=True, env={**env, "FINETUNE_TOKEN_STORE": store}, check=False
        )
        assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
        weights[name] = load_file(artifact_dir(config) / "adapter_model.safetensors")
        built_by[name] = [
            event.get("rank") for event in log_events(result.stderr) if event["msg"] == "token_store_built"
        ]

    # One store per source, written once (rank 0 built it while rank 1 waited), no partial directory left.
    assert built_by == {"memory": [], "store": [0, 0]}
    assert len(stores(trainer_env)) == 2
    assert not [name for name in stores(trainer_env) if ".partial-" in name]
    for name in weights["memory"]:
        assert torch.equal(weights["memory"][name], weights["store"][name]), name
