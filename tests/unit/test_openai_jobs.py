"""The OpenAI job request ↔ FineTuneJob mapping, both ways."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from finetune_core.api import FineTuneModel
from finetune_operator.openai_api.admission import check_job, hints
from finetune_operator.openai_api.errors import ApiError
from finetune_operator.openai_api.jobs import (
    CANCELLED_AT,
    JobPolicy,
    JobRequest,
    ModelHints,
    adapter_name,
    job_manifest,
    job_object,
    job_status,
    parse_job_request,
)

FILE = "file-" + "a" * 24
VALIDATION = "file-" + "b" * 24
NOW = 1_800_000_000


def refusal(body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_job_request(body)
    return caught.value


def manifest(request: JobRequest, hints: ModelHints | None = None, policy: JobPolicy | None = None) -> dict:
    hints, policy = hints or ModelHints(), policy or JobPolicy()
    return job_manifest(request, "team-a", "ftjob-0123", "s3://files/team-a/train.jsonl", None, hints, policy)


def test_a_minimal_request_is_a_supervised_job_on_the_catalog_model_with_every_hyperparameter_auto():
    request = parse_job_request({"model": "llama-8b", "training_file": FILE})
    assert request == JobRequest(model="llama-8b", training_file=FILE)
    spec = manifest(request)["spec"]
    assert spec["model"] == {"name": "llama-8b"}
    assert spec["objective"] == "sft"
    assert spec["data"] == {"format": "messages", "train": [{"uri": "s3://files/team-a/train.jsonl"}]}
    assert "training" not in spec


def test_supervised_hyperparameters_map_to_epochs_learning_rate_and_batch_tokens():
    request = parse_job_request(
        {
            "model": "llama-8b",
            "training_file": FILE,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0}},
            },
            "seed": 7,
        }
    )
    training = manifest(request, ModelHints(method_type="lora", max_seq_length=1024))["spec"]["training"]
    assert training == {"epochs": 3, "batchTokens": 8 * 1024, "learningRate": pytest.approx(2e-4), "seed": 7}


def test_the_learning_rate_multiplier_scales_the_default_of_the_models_method():
    request = JobRequest(model="m", training_file=FILE, learning_rate_multiplier=0.5)
    assert manifest(request, ModelHints(method_type="full"))["spec"]["training"]["learningRate"] == pytest.approx(5e-6)


def test_top_level_hyperparameters_are_the_supervised_ones():
    request = parse_job_request({"model": "m", "training_file": FILE, "hyperparameters": {"n_epochs": 2}})
    assert (request.method, request.n_epochs, request.batch_size) == ("supervised", 2, None)


def test_dpo_through_method_trains_the_dpo_objective_on_preference_data_with_its_beta():
    request = parse_job_request(
        {
            "model": "m",
            "training_file": FILE,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto"}}},
        }
    )
    spec = manifest(request)["spec"]
    assert spec["objective"] == "dpo"
    assert spec["data"]["format"] == "preference"
    assert spec["training"] == {"dpo": {"beta": 0.2}}


def test_file_ids_metadata_and_the_requested_hyperparameters_are_kept_in_annotations():
    request = JobRequest(
        model="m",
        training_file=FILE,
        validation_file=VALIDATION,
        n_epochs=2,
        suffix="Support Bot",
        metadata={"team": "x"},
    )
    built = job_manifest(request, "team-a", "ftjob-0123", "s3://f/t", "s3://f/v", ModelHints(), JobPolicy())
    annotations = built["metadata"]["annotations"]
    assert annotations["openai.finetune.dev/training-file"] == FILE
    assert annotations["openai.finetune.dev/validation-file"] == VALIDATION
    assert json.loads(annotations["openai.finetune.dev/metadata"]) == {"team": "x"}
    assert json.loads(annotations["openai.finetune.dev/hyperparameters"]) == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert built["spec"]["data"]["eval"] == {"uri": "s3://f/v"}
    assert built["spec"]["adapter"] == {"name": "ftjob-0123-support-bot"}


def test_the_admins_policy_gives_the_data_secret_and_enforces_the_gate_only_with_general_data():
    request = JobRequest(model="m", training_file=FILE)
    spec = manifest(request, policy=JobPolicy(data_secret="files-read", general_data_uri="s3://g/general.jsonl"))[
        "spec"
    ]
    assert spec["data"]["credentialsSecretRef"] == {"name": "files-read"}
    assert spec["data"]["general"] == {"uri": "s3://g/general.jsonl", "format": "text"}
    assert spec["evaluation"]["gate"]["mode"] == "enforce"
    assert manifest(request)["spec"]["evaluation"]["gate"]["mode"] == "warn"


def test_the_admins_template_places_every_job():
    template = {"nodeSelector": {"pool": "gpu"}}
    spec = manifest(JobRequest(model="m", training_file=FILE), policy=JobPolicy(template=template))["spec"]
    assert spec["template"] == template
    assert "template" not in manifest(JobRequest(model="m", training_file=FILE))["spec"]


def test_an_adapter_name_stays_a_dns_label_whatever_the_suffix():
    name = adapter_name("ftjob-" + "0" * 24, "A" * 64)
    assert len(name) <= 63 and name.startswith("ftjob-")
    assert adapter_name("ftjob-1", "my_model!") == "ftjob-1-my-model"
    assert adapter_name("ftjob-1", None) == "ftjob-1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "training_file": FILE, "learning_rate": 1}, "learning_rate"),
        ({"model": "m", "training_file": FILE, "hyperparameters": {"epochs": 1}}, "hyperparameters.epochs"),
        (
            {"model": "m", "training_file": FILE, "method": {"type": "dpo", "dpo": {"hyperparameters": {"gamma": 1}}}},
            "method.dpo.hyperparameters.gamma",
        ),
        ({"model": "m", "training_file": FILE, "method": {"type": "supervised", "dpo": {}}}, "method.dpo"),
    ],
)
def test_unknown_parameters_are_refused_by_name(body, param):
    error = refusal(body)
    assert (error.status, error.code, error.param) == (400, "unknown_parameter", param)
    assert param in error.message


def test_an_unknown_parameter_name_that_is_not_plain_is_not_repeated():
    error = refusal({"model": "m", "training_file": FILE, "<script>": 1})
    assert "<script>" not in error.message and "<script>" not in str(error.param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_file": FILE}, "model"),
        ({"model": "m"}, "training_file"),
        ({"model": "m", "training_file": "train.jsonl"}, "training_file"),
        ({"model": "m", "training_file": FILE, "validation_file": 3}, "validation_file"),
        ({"model": "m", "training_file": FILE, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"model": "m", "training_file": FILE, "hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size"),
        (
            {"model": "m", "training_file": FILE, "method": {"type": "reinforcement"}},
            "method.type",
        ),
        ({"model": "m", "training_file": FILE, "seed": -1}, "seed"),
        ({"model": "m", "training_file": FILE, "suffix": "x" * 65}, "suffix"),
        ({"model": "m", "training_file": FILE, "suffix": "!!!"}, "suffix"),
        ({"model": "m", "training_file": FILE, "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"model": "m", "training_file": FILE, "integrations": [{"type": "wandb"}]}, "integrations"),
        (
            {
                "model": "m",
                "training_file": FILE,
                "hyperparameters": {"n_epochs": 1},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
            },
            "hyperparameters",
        ),
    ],
)
def test_wrong_values_are_refused_naming_the_parameter(body, param):
    error = refusal(body)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)


def finetunejob(phase=None, conditions=(), annotations=None, **status) -> dict:
    return {
        "metadata": {
            "name": "ftjob-1",
            "namespace": "team-a",
            "creationTimestamp": "2027-01-15T08:00:00Z",
            "annotations": {"openai.finetune.dev/training-file": FILE, **(annotations or {})},
        },
        "spec": {"model": {"name": "llama-8b"}, "objective": "sft", "data": {"train": [{"uri": "s3://f/t"}]}},
        "status": {
            "phase": phase,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2027-01-15T09:00:00Z"}
                for t, s, r, m in conditions
            ],
            **status,
        },
    }


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (finetunejob(), "validating_files"),
        (finetunejob("Pending", [("Created", "True", "Created", "")]), "queued"),
        (finetunejob("Suspended", [("Suspended", "True", "JobSuspended", "")]), "queued"),
        (finetunejob("Running"), "running"),
        (dict(finetunejob("Running"), spec={"suspend": True}), "queued"),
        (finetunejob("Succeeded", [("Succeeded", "True", "TrainingSucceeded", "")]), "running"),
        (finetunejob("Succeeded", [("Published", "True", "AdapterPublished", "")]), "succeeded"),
        (finetunejob("Succeeded", [("Published", "False", "GateFailed", "general loss +9%")]), "failed"),
        (finetunejob("Succeeded", [("Published", "False", "ArtifactUnknown", "no report")]), "failed"),
        (finetunejob("Succeeded", [("Published", "False", "PublishFailed", "503")]), "running"),
        (finetunejob("Failed", [("Failed", "True", "DataError", "train.jsonl:3 bad")]), "failed"),
        (finetunejob("Suspended", annotations={CANCELLED_AT: "2027-01-15T10:00:00Z"}), "cancelled"),
        (finetunejob("Pending", [("ModelResolved", "False", "CatalogLimitExceeded", "maxGPUs 8")]), "failed"),
    ],
)
def test_the_status_is_one_of_openais_six(job, expected):
    assert job_status(job) == expected


def test_a_succeeded_job_names_its_published_adapter_and_when_it_finished():
    job = finetunejob(
        "Succeeded",
        [("Published", "True", "AdapterPublished", "")],
        completionTime="2027-01-15T10:00:00Z",
        adapter={"name": "ftjob-1-bot"},
    )
    found = job_object(job, NOW)
    assert found["status"] == "succeeded"
    assert found["fine_tuned_model"] == "ftjob-1-bot"
    assert found["created_at"] == int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp())
    assert found["finished_at"] == found["created_at"] + 2 * 3600
    assert found["error"] is None
    assert found["object"] == "fine_tuning.job"
    assert (found["id"], found["organization_id"], found["model"]) == ("ftjob-1", "team-a", "llama-8b")
    assert found["training_file"] == FILE


def test_a_failed_job_carries_the_reason_and_message_of_its_condition_as_the_error():
    found = job_object(finetunejob("Failed", [("Failed", "True", "DataError", "train.jsonl:3 bad row")]), NOW)
    assert found["error"] == {"code": "DataError", "message": "train.jsonl:3 bad row", "param": None}
    assert found["fine_tuned_model"] is None


def test_a_running_job_estimates_its_finish_from_the_eta():
    found = job_object(finetunejob("Running", progress={"step": 5, "etaSeconds": 600}), NOW)
    assert found["estimated_finish"] == NOW + 600


def catalog_entry(**limits) -> FineTuneModel:
    return FineTuneModel.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneModel",
            "metadata": {"name": "llama-8b"},
            "spec": {"uri": "hf://meta/llama-8b", "defaults": {"maxSeqLength": 4096}, "limits": limits},
        }
    )


def test_the_manifest_is_a_valid_finetunejob_the_catalog_resolves():
    request = parse_job_request(
        {"model": "llama-8b", "training_file": FILE, "method": {"type": "dpo", "dpo": {"hyperparameters": {}}}}
    )
    check_job(manifest(request), catalog_entry(), "team-a", {})


def test_the_catalogs_defaults_size_the_batch():
    assert hints(catalog_entry()) == ModelHints(method_type="lora", max_seq_length=4096)


def test_a_job_over_a_catalog_limit_is_refused_naming_the_limit():
    request = parse_job_request({"model": "llama-8b", "training_file": FILE, "hyperparameters": {"n_epochs": 5}})
    with pytest.raises(ApiError) as caught:
        check_job(manifest(request), catalog_entry(maxEpochs=3), "team-a", {})
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "model_limit_exceeded", "n_epochs")
    assert "maxEpochs 3" in caught.value.message


def test_a_namespace_the_catalog_does_not_allow_gets_the_same_404_as_an_unknown_model():
    request = JobRequest(model="llama-8b", training_file=FILE)
    with pytest.raises(ApiError) as caught:
        check_job(manifest(request), catalog_entry(namespaces=["team-b"]), "team-a", {})
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
