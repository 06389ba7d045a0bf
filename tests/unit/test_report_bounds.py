"""What the trainer reports is bounded before it reaches a status: integers the API server can store
(int64) and finite floats at any depth. A report out of bounds is refused naming the field (a 400 at the
progress endpoint), never accepted and then failed at the API server."""

from __future__ import annotations

import json

import pytest
from finetune_core.api import (
    FinalSummary,
    FineTuneJobStatus,
    Gate,
    ProgressReport,
    TrainingReport,
    format_validation_error,
)
from finetune_operator.crdgen import finetunejob_crd
from finetune_operator.progress.status_patch import job_gate, status_patch
from pydantic import ValidationError

DIGEST = "sha256:" + "d" * 64
NOW = "2025-03-04T10:00:00Z"


def refusal(model, body: str) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(body)
    return format_validation_error(caught.value)


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"step": 2**80}, "step"),
        ({"step": 1, "totalSteps": 2**63}, "totalSteps"),
        ({"step": 1, "etaSeconds": 2**64}, "etaSeconds"),
        ({"step": 1, "resumedFromStep": 2**70}, "resumedFromStep"),
        ({"step": 1, "checkpoint": {"step": 2**80, "uri": "s3://b/c/"}}, "checkpoint.step"),
        ({"step": 1, "artifact": {"uri": "s3://b/a/", "digest": DIGEST, "sizeBytes": 2**80}}, "artifact.sizeBytes"),
        ({"step": 1, "evaluation": {"task": {"samples": 2**80}}}, "evaluation.task.samples"),
    ],
)
def test_an_integer_beyond_int64_is_refused_naming_the_field(report, field):
    (line,) = refusal(ProgressReport, json.dumps(report))
    assert line.startswith(f"{field}: ") and "9223372036854775807" in line


def test_the_largest_int64_is_accepted():
    assert ProgressReport.model_validate({"step": 2**63 - 1}).step == 2**63 - 1


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize(
    ("template", "field"),
    [
        ('{"step": 1, "evaluation": {"task": {"baseLoss": %s}}}', "evaluation.task.baseLoss"),
        ('{"step": 1, "evaluation": {"general": {"adapterPerplexity": %s}}}', "evaluation.general.adapterPerplexity"),
        ('{"step": 1, "trainLoss": %s}', "trainLoss"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_at_any_depth(number, template, field):
    (line,) = refusal(ProgressReport, template % number)
    assert line == f"{field}: Input should be a finite number"


def test_the_final_summary_and_the_training_report_are_bounded_the_same_way():
    summary = {"artifact": {"uri": "s3://b/a/", "digest": DIGEST, "sizeBytes": 1}, "evaluation": {"task": {}}}
    summary["evaluation"]["task"]["baseLoss"] = "NaN"
    assert refusal(FinalSummary, json.dumps(summary).replace('"NaN"', "NaN")) == [
        "evaluation.task.baseLoss: Input should be a finite number"
    ]
    report = {"job": {}, "configSha256": "0" * 64, "steps": 2**80}
    assert refusal(TrainingReport, json.dumps(report))[0].startswith("steps: ")
    assert refusal(TrainingReport, '{"job": {}, "configSha256": "", "wallSeconds": Infinity}') == [
        "wallSeconds: Input should be a finite number"
    ]


def test_the_status_refuses_what_the_api_server_could_not_store():
    assert refusal(FineTuneJobStatus, json.dumps({"progress": {"step": 2**80}}))[0].startswith("progress.step: ")
    assert refusal(FineTuneJobStatus, json.dumps({"restarts": 2**63}))[0].startswith("restarts: ")
    assert refusal(FineTuneJobStatus, '{"evaluation": {"task": {"adapterLoss": Infinity}}}') == [
        "evaluation.task.adapterLoss: Input should be a finite number"
    ]


def test_the_crd_says_the_status_integers_are_int64_without_a_bound_the_api_server_cannot_read():
    """The API server reads a schema's maximum as a float64, and 2**63 - 1 is not one: format int64 says it."""
    status = finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    step = status["properties"]["progress"]["properties"]["step"]
    assert step["format"] == "int64" and "maximum" not in step


# -- the status patch of a progress report --------------------------------------------------------

NUMBERS = {
    "task": {"baseLoss": 2.0, "adapterLoss": 2.5, "samples": 32},
    "general": {"baseLoss": 3.0, "adapterLoss": 3.03, "samples": 32},
}


def test_a_reports_verdict_is_replaced_by_the_operators_judgement_of_its_numbers():
    report = ProgressReport.model_validate(
        {"step": 40, "evaluation": {**NUMBERS, "gate": "Passed", "message": "trust me"}}
    )
    evaluation = status_patch(report, Gate(), NOW)["evaluation"]
    assert evaluation["gate"] == "Failed" and evaluation["task"] == NUMBERS["task"]
    assert "trust me" not in evaluation["message"] and "(+25.0%; needs a decrease" in evaluation["message"]


def test_a_reported_verdict_without_numbers_is_a_failed_gate():
    report = ProgressReport.model_validate({"step": 40, "evaluation": {"gate": "Passed"}})
    evaluation = status_patch(report, Gate(), NOW)["evaluation"]
    assert evaluation["gate"] == "Failed" and "task loss not measured" in evaluation["message"]


def test_the_gate_is_the_jobs_as_stored():
    warn = {"spec": {"evaluation": {"gate": {"mode": "warn", "maxGeneralLossIncrease": 0.5}}}}
    assert job_gate(warn) == Gate(mode="warn", max_general_loss_increase=0.5)
    assert job_gate({"spec": {}}) == Gate()
    assert job_gate({"spec": {"evaluation": {"gate": {"mode": "lenient"}}}}) == Gate()
