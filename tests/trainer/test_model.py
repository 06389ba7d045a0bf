"""Method settings reach the model: target modules, rsLoRA, gradient checkpointing, packed layout."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

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


QUANTIZATION_PROBE = """
import importlib.util, sys
from finetune_core.api import Method
from finetune_trainer.model import skip_unused_quantization
method = {"type": sys.argv[1], **({} if sys.argv[1] == "full" else {"lora": {"rank": 8}})}
skip_unused_quantization(Method.model_validate(method))
import peft
print(importlib.util.find_spec("bitsandbytes") is not None, sys.modules.get("bitsandbytes") is not None)
"""


@pytest.mark.parametrize(
    ("method", "loaded"), [("lora", "False False"), ("full", "False False"), ("qlora", "True True")]
)
def test_only_a_qlora_process_loads_bitsandbytes(method, loaded):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed here")
    probe = subprocess.run(
        [sys.executable, "-c", QUANTIZATION_PROBE, method], capture_output=True, text=True, check=True, timeout=300
    )
    assert probe.stdout.split("\n")[-2] == loaded, probe.stderr[-2000:]
