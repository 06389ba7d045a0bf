"""The CPU preflight counts what training then counts, with the same code, and stops bad data with file:line."""

from __future__ import annotations

import json

import pytest
from finetune_core.api import ExitCode, PreflightReport
from finetune_trainer.__main__ import main
from finetune_trainer.preflight import TrainingTopology, preflight
from finetune_trainer.run import run
from trainer_data import chat_rows, preference_rows, sft_rows, text_rows

pytestmark = pytest.mark.trainer

CPU = TrainingTopology(processes=1, on_gpu=False)


def termination_report(trainer_env) -> PreflightReport:
    return PreflightReport.model_validate_json((trainer_env / "termination-log").read_text())


def test_the_plan_has_the_steps_and_tokens_that_training_then_runs(make_job, trainer_env):
    config = make_job(training={"maxSteps": None, "epochs": 1.5})
    plan = preflight(config, CPU)
    report = run(config)
    assert plan.total_steps == report.steps
    assert plan.trained_tokens == report.tokens_seen
    assert plan.sources[0].rows == report.data[0].rows
    # One source, split 90/10 before mixing: its tokens are the training mix's and the eval split's.
    assert plan.tokens.train + plan.tokens.eval == report.data[0].tokens
    assert plan.parameters is not None and plan.parameters > 0


def test_a_max_steps_run_is_planned_to_its_step_count(make_job, trainer_env):
    config = make_job(training={"maxSteps": 7})
    plan = preflight(config, CPU)
    assert plan.total_steps == run(config).steps == 7
    assert plan.epochs == pytest.approx(7 / plan.steps_per_epoch, rel=1e-3)


@pytest.mark.parametrize(
    ("objective", "rows"),
    [("sft", sft_rows(40)), ("sft", chat_rows(30)), ("pretrain", text_rows(30)), ("dpo", preference_rows(30))],
    ids=["prompt-completion", "chat", "text", "preference"],
)
def test_every_format_and_objective_is_counted_per_set(make_job, trainer_env, objective, rows):
    config = make_job(objective=objective, train_rows=rows)
    plan = preflight(config, CPU)
    assert plan.examples.train > 0 and plan.tokens.train > plan.examples.train
    assert plan.examples.general > 0 and plan.tokens.general > 0
    assert sum(source.examples for source in plan.sources) == plan.examples.train
    assert sum(source.tokens for source in plan.sources) == plan.tokens.train


def test_more_processes_on_gpu_plan_the_same_tokens_in_no_more_steps(make_job, trainer_env):
    config = make_job(training={"maxSteps": None, "epochs": 1})
    one = preflight(config, CPU)
    eight = preflight(config, TrainingTopology(processes=8, on_gpu=True))
    assert eight.tokens == one.tokens
    assert eight.processes == 8 and eight.total_steps <= one.total_steps


def test_the_cli_leaves_the_plan_in_the_termination_message(make_job, trainer_env):
    config = make_job()
    assert main(["preflight", f"--config={config}", "--processes=2", "--accelerator=cpu"]) == ExitCode.SUCCESS
    report = termination_report(trainer_env)
    assert report.outcome == "Planned" and report.plan is not None
    assert report.plan.processes == 2 and report.plan.total_steps == 30
    assert len((trainer_env / "termination-log").read_bytes()) < 4000


def test_bad_rows_stop_the_preflight_with_their_file_and_line(make_job, trainer_env):
    rows = [*sft_rows(6), {"prompt": "no completion"}, *sft_rows(3), "not an object", {"completion": "x"}]
    config = make_job(train_rows=rows, data={"maxInvalidFraction": 0.1})
    code = main(["preflight", f"--config={config}", "--accelerator=cpu"])
    assert code == ExitCode.DATA_ERROR
    report = termination_report(trainer_env)
    assert report.outcome == "DataError" and report.plan is None
    train_file = json.loads(config.read_text())["data"]["train"][0]["uri"]
    assert report.origins == [f"{train_file}:7", f"{train_file}:11", f"{train_file}:12"]
