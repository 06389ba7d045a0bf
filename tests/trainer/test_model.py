"""Method settings reach the model: target modules, rsLoRA, gradient checkpointing, packed layout."""

from __future__ import annotations

import json
import statistics

import pytest
from finetune_trainer.errors import ConfigError
from finetune_trainer.run import run
from trainer_data import artifact_dir, step_losses

pytestmark = pytest.mark.trainer


def test_named_target_modules_and_rslora_are_what_the_adapter_holds(make_job):
    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"], "rslora": True}
    config = make_job(method={"type": "lora", "lora": lora}, training={"maxSteps": 2})
    run(config)
    adapter = json.loads((artifact_dir(config) / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["q_proj", "v_proj"]
    assert adapter["use_rslora"] is True and adapter["r"] == 4 and adapter["lora_alpha"] == 8


def test_all_linear_is_recorded_as_the_module_names_it_chose(make_job):
    config = make_job(training={"maxSteps": 1})
    run(config)
    adapter = json.loads((artifact_dir(config) / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_a_target_module_the_model_lacks_is_a_configuration_error(make_job):
    config = make_job(method={"type": "lora", "lora": {"targetModules": ["no_such_proj"]}})
    with pytest.raises(ConfigError, match="targetModules"):
        run(config)


def test_gradient_checkpointing_on_trains(make_job):
    config = make_job(training={"maxSteps": 12, "gradientCheckpointing": "on"})
    report = run(config)
    assert report.device["gradient_checkpointing"] is True
    losses = step_losses(config)
    assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3])


def test_packed_micro_batches_train_like_the_varlen_path_on_gpu(make_job, monkeypatch):
    monkeypatch.setenv("FINETUNE_PACKING", "on")
    config = make_job(training={"maxSteps": 12})
    report = run(config)
    assert report.device["packing"] is True
    losses = step_losses(config)
    assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3])
