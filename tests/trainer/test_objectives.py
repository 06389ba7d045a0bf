"""Every objective with every trainable method: the loss goes down and the artifact loads back and generates."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from finetune_core.api import Manifest, TrainingReport, manifest_of_directory
from finetune_trainer.run import run
from trainer_data import artifact_dir, chat_rows, preference_rows, sft_rows, step_losses, text_rows

pytestmark = pytest.mark.trainer

OBJECTIVES = {
    "sft-prompt-completion": ("sft", sft_rows),
    "sft-chat-messages": ("sft", chat_rows),
    "pretrain-text": ("pretrain", text_rows),
    "dpo-preference": ("dpo", preference_rows),
}
# Learning rates that move a randomly initialised tiny model visibly within two dozen steps. A LoRA
# adapter of a random base has little to build on: its loss falls slowly, but it falls.
METHODS = {
    "lora": ({"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}}, 5e-3),
    "full": ({"type": "full"}, 2e-3),
}


@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_training_lowers_the_loss_and_the_artifact_loads_and_generates(
    make_job, tiny_model_dir, objective_name, method_name
):
    objective, rows = OBJECTIVES[objective_name]
    method, learning_rate = METHODS[method_name]
    config = make_job(
        train_rows=rows(60),
        objective=objective,
        method=method,
        training={"learningRate": learning_rate, "maxSteps": 24, "batchTokens": 384},
    )

    report = run(config)

    losses = step_losses(config)
    assert len(losses) == 24
    assert statistics.mean(losses[-4:]) < 0.95 * statistics.mean(losses[:4]), losses
    assert report.steps == 24 and report.tokens_seen > 0

    directory = artifact_dir(config)
    manifest = Manifest.model_validate_json((directory / "manifest.json").read_text())
    assert manifest.digest == manifest_of_directory(directory).digest == report.artifact.digest
    saved_report = TrainingReport.model_validate_json((directory / "training_report.json").read_text())
    assert saved_report.steps == 24

    model, tokenizer = _load_artifact(directory, tiny_model_dir, adapter=method_name == "lora")
    prompt = tokenizer("What colour is the sky?", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def _load_artifact(directory, base_dir, *, adapter: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not adapter:
        assert (directory / "config.json").is_file() and list(directory.glob("*.safetensors"))
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval(), tokenizer
    from peft import PeftModel

    adapter_config = json.loads((directory / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == f"file://{base_dir}"
    assert (directory / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, directory).eval(), tokenizer
