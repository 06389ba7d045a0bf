"""The optimizer step: gradient accumulation is exact, and the learning-rate schedule has its shape."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from finetune_core.api import Training
from finetune_trainer.batching import Step, trained_tokens
from finetune_trainer.data.types import IGNORE_INDEX, Example
from finetune_trainer.distributed import Distributed
from finetune_trainer.loop import TrainingRun, run_step
from finetune_trainer.objectives import LanguageModelling
from finetune_trainer.optim import lr_factor
from finetune_trainer.report import TrainingHooks
from finetune_trainer.signals import StopRequest

pytestmark = pytest.mark.trainer


@pytest.fixture
def accelerator(trainer_env):
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def examples(count: int) -> list[Example]:
    made = []
    for i in range(count):
        ids = [(7 * i + j) % 300 + 10 for j in range(5 + 3 * i)]
        labels = [IGNORE_INDEX] * (2 + i % 3) + ids[2 + i % 3 :]
        made.append(Example(input_ids=ids, labels=labels))
    return made


def one_step(accelerator, model, data, micro_batches) -> dict[str, torch.Tensor]:
    """The parameters after one SGD step (lr 1: the update is the gradient) over ``micro_batches``."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    step = Step(
        micro_batches=(tuple(tuple(mb) for mb in micro_batches),),
        real_tokens=sum(len(e) for e in data),
        trained_tokens=sum(trained_tokens(e) for e in data),
        examples=len(data),
    )
    training_run = TrainingRun(
        dist=Distributed(accelerator),
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        objective=LanguageModelling(),
        examples=data,
        plan_for_epoch=lambda epoch, done=(): [step],
        total_steps=1,
        packing=False,
        pad_token_id=0,
        flat_batches=False,
        max_grad_norm=0.0,
        hooks=TrainingHooks(),
        stop=StopRequest(),
    )
    result = run_step(training_run, step)
    assert result.tokens == step.real_tokens
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_accumulating_micro_batches_gives_the_gradient_of_one_batch(accelerator, model):
    data = examples(6)
    whole = one_step(accelerator, model, data, [[0, 1, 2, 3, 4, 5]])
    accumulated = one_step(accelerator, model, data, [[5], [0, 3], [1, 2, 4]])
    packed_singles = one_step(accelerator, model, data, [[i] for i in range(6)])
    for name in whole:
        assert torch.allclose(whole[name], accumulated[name], atol=1e-6), name
        assert torch.allclose(whole[name], packed_singles[name], atol=1e-6), name


def test_warmup_rises_linearly_to_the_peak():
    factors = [lr_factor(step, 100, 4, "cosine") for step in range(5)]
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize(
    ("kind", "middle", "end"),
    [("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("constant", 1.0, 1.0)],
)
def test_schedules_after_warmup(kind, middle, end):
    assert lr_factor(60, 110, 10, kind) == pytest.approx(middle)
    assert lr_factor(110, 110, 10, kind) == pytest.approx(end, abs=1e-9)


def test_cosine_follows_half_a_cosine():
    assert lr_factor(35, 110, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_without_warmup_the_first_step_uses_the_peak():
    assert lr_factor(0, 10, 0, "linear") == 1.0
    assert Training(learning_rate=1e-4, max_steps=10).warmup_ratio > 0  # the api's default warms up
