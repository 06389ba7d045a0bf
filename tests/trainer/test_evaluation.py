"""Evaluation: base against adapted on the task and general data, and the gate's verdict on them."""

from __future__ import annotations

import json
import math

import pytest
from finetune_core.api import ExitCode
from finetune_trainer.__main__ import main
from finetune_trainer.run import run
from trainer_data import artifact_dir, preference_rows

pytestmark = pytest.mark.trainer

LORA = {"type": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}}


def test_base_and_adapter_are_measured_on_task_and_general_data(make_job):
    report = run(make_job(method=LORA, training={"maxSteps": 30}))

    task, general = report.evaluation.task, report.evaluation.general
    for comparison in (task, general):
        assert comparison.samples > 0
        assert comparison.base_perplexity == pytest.approx(math.exp(comparison.base_loss))
        assert comparison.adapter_perplexity == pytest.approx(math.exp(comparison.adapter_loss))
    assert task.adapter_loss < task.base_loss
    assert general.adapter_loss != general.base_loss
    assert report.evaluation.gate == "Skipped"


def test_full_fine_tuning_measures_the_base_before_training(make_job):
    adapter = run(make_job(name="adapter", method=LORA, training={"maxSteps": 4}))
    full = run(make_job(name="full", method={"type": "full"}, training={"maxSteps": 4, "learningRate": 1e-3}))

    # Same base weights, same eval rows: the same base losses, however the run trains.
    assert full.evaluation.task.base_loss == pytest.approx(adapter.evaluation.task.base_loss, abs=1e-6)
    assert full.evaluation.general.base_loss == pytest.approx(adapter.evaluation.general.base_loss, abs=1e-6)
    assert full.evaluation.task.adapter_loss < full.evaluation.task.base_loss


def test_overfitting_a_narrow_set_fails_a_strict_general_gate(make_job):
    narrow = [{"prompt": "Say the word.", "completion": " banana banana banana"}] * 40
    config = make_job(
        train_rows=narrow,
        method={"type": "full"},
        training={"maxSteps": 40, "learningRate": 1e-2},
        evaluation={"gate": {"mode": "enforce", "maxGeneralLossIncrease": 0.02}},
    )

    # Refused: its own exit code (the Job fails without retries), the artifact kept for inspection.
    assert main(["--config", str(config)]) == ExitCode.GATE_FAILED
    report = json.loads((artifact_dir(config) / "training_report.json").read_text())

    evaluation = report["evaluation"]
    assert evaluation["gate"] == "Failed"
    assert evaluation["general"]["adapter_loss"] > 1.02 * evaluation["general"]["base_loss"]
    assert "general loss" in evaluation["message"] and "FAILED" in evaluation["message"]
    assert main(["--config", str(config)]) == ExitCode.GATE_FAILED, "a retry must not turn a refusal into success"


def test_gentle_training_passes_a_lenient_gate(make_job):
    report = run(
        make_job(
            method=LORA,
            training={"maxSteps": 20, "learningRate": 2e-3},
            evaluation={"gate": {"mode": "enforce", "maxGeneralLossIncrease": 0.2, "minTaskLossDecrease": 0.01}},
        )
    )
    assert report.evaluation.gate == "Passed", report.evaluation.message


def test_generation_metrics_score_exact_matches_and_valid_json(make_job):
    rows = [{"prompt": f"Record {i}:", "completion": ' {"ok": true}'} for i in range(40)]
    report = run(
        make_job(
            train_rows=rows,
            method={"type": "full"},
            training={"maxSteps": 40, "learningRate": 5e-3},
            evaluation={"metrics": ["exactMatch", "jsonValid"]},
        )
    )
    task = report.evaluation.task
    assert task.base_exact_match == 0.0 and task.base_json_valid == 0.0
    assert task.adapter_exact_match == 1.0 and task.adapter_json_valid == 1.0


def test_periodic_evaluation_reports_the_task_loss(make_job):
    config = make_job(method=LORA, training={"maxSteps": 20}, evaluation={"everySteps": 5})
    run(config)
    records = [json.loads(line) for line in (artifact_dir(config) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [5, 10, 15]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_dpo_compares_against_the_reference_whose_loss_is_log_2(make_job):
    report = run(make_job(train_rows=preference_rows(60), objective="dpo", method=LORA, training={"maxSteps": 30}))
    task = report.evaluation.task
    assert task.base_loss == pytest.approx(math.log(2))
    assert task.adapter_loss < task.base_loss
    assert task.base_perplexity is None  # a DPO loss is not a token loss


def test_generation_stops_at_the_templates_end_of_turn_even_when_it_is_not_the_eos(tiny_model_dir):
    from finetune_trainer.evaluate import stop_token_ids
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer.eos_token = "<|endoftext|>"  # as in base models whose chat template ends turns with another token
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    stops = stop_token_ids(model, tokenizer)
    for token in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
        assert tokenizer.convert_tokens_to_ids(token) in stops, token
    assert tokenizer.pad_token_id not in stops
