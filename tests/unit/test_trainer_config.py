"""resolve_trainer_config: every default that depends on other fields or on the operator is decided once."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob, LoraSettings, TrainerConfig
from finetune_operator.render import ResolutionError, adapter_name, artifact_version, resolve_trainer_config
from finetune_operator.settings import Settings

NAMESPACE = "team-a"
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
CREATED = "2025-03-04T05:06:07Z"
SETTINGS = Settings(default_output_uri="s3://models/out")


def make_job(edits: dict[str, Any] | None = None, name: str = "demo") -> FineTuneJob:
    base = {
        "metadata.namespace": NAMESPACE,
        "metadata.uid": UID,
        "metadata.creationTimestamp": CREATED,
    }
    return FineTuneJob.model_validate(edited(valid_job(name), {**base, **(edits or {})}))


def resolve(edits: dict[str, Any] | None = None, settings: Settings = SETTINGS) -> TrainerConfig:
    return resolve_trainer_config(make_job(edits), settings)


# ---------------------------------------------------------------------------------------------
# training defaults


@pytest.mark.parametrize(
    ("method", "learning_rate"),
    [
        ({"type": "lora"}, 1e-4),
        ({"type": "qlora", "lora": {"rank": 8}}, 1e-4),
        ({"type": "full"}, 1e-5),
    ],
)
def test_the_learning_rate_defaults_per_method(method, learning_rate):
    assert resolve({"spec.method": method}).training.learning_rate == learning_rate


def test_a_learning_rate_the_user_set_is_kept():
    assert resolve({"spec.training": {"learningRate": 3e-4}}).training.learning_rate == 3e-4


def test_one_epoch_when_neither_epochs_nor_max_steps_is_set():
    training = resolve().training
    assert training.epochs == 1.0
    assert training.max_steps is None


def test_max_steps_leaves_epochs_unset():
    training = resolve({"spec.training": {"maxSteps": 500}}).training
    assert training.max_steps == 500
    assert training.epochs is None


def test_epochs_the_user_set_are_kept():
    assert resolve({"spec.training": {"epochs": 2.5}}).training.epochs == 2.5


def test_other_training_settings_pass_through():
    training = resolve({"spec.training": {"maxSeqLength": 4096, "seed": 7, "precision": "fp16"}}).training
    assert (training.max_seq_length, training.seed, training.precision) == (4096, 7, "fp16")


# ---------------------------------------------------------------------------------------------
# method and data defaults


def test_lora_gets_the_default_adapter_settings():
    assert resolve().method.lora == LoraSettings()
    assert (LoraSettings().rank, LoraSettings().alpha, LoraSettings().target_modules) == (16, 32, ["all-linear"])


def test_lora_settings_the_user_set_are_kept():
    lora = resolve({"spec.method": {"type": "lora", "lora": {"rank": 64, "alpha": 128}}}).method.lora
    assert (lora.rank, lora.alpha) == (64, 128)


def test_full_fine_tuning_has_no_lora_settings():
    assert resolve({"spec.method": {"type": "full"}}).method.lora is None


def test_the_eval_split_defaults_to_five_percent():
    evaluation = resolve().data.eval
    assert evaluation.split_fraction == 0.05
    assert evaluation.uri is None


def test_an_eval_set_the_user_gave_is_kept():
    evaluation = resolve({"spec.data.eval": {"uri": "s3://datasets/eval.jsonl"}}).data.eval
    assert evaluation.uri == "s3://datasets/eval.jsonl"
    assert evaluation.split_fraction is None


def test_an_eval_split_the_user_gave_is_kept():
    assert resolve({"spec.data.eval": {"splitFraction": 0.2}}).data.eval.split_fraction == 0.2


def test_general_data_and_evaluation_pass_through():
    config = resolve({"spec.evaluation": {"gate": {"mode": "warn", "maxGeneralLossIncrease": 0.1}}})
    assert config.data.general.uri == "s3://datasets/general.jsonl"
    assert config.evaluation.gate.mode == "warn"
    assert config.evaluation.gate.max_general_loss_increase == 0.1


@pytest.mark.parametrize(
    ("uri", "served"),
    [
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct"),
        ("s3://models/base/Llama-3-8B/", "llama-3-8b"),
        ("pvc://models/mistral-7b", "mistral-7b"),
        ("hf://gpt2", "gpt2"),
    ],
)
def test_the_served_name_defaults_to_the_last_uri_segment_lower_cased(uri, served):
    assert resolve({"spec.model.uri": uri}).model.served_name == served


def test_a_served_name_the_user_set_is_kept():
    assert resolve({"spec.model.servedName": "Base-Model"}).model.served_name == "Base-Model"


def test_the_objective_passes_through():
    config = resolve({"spec.objective": "pretrain", "spec.data.format": "text"})
    assert config.objective == "pretrain"


# ---------------------------------------------------------------------------------------------
# identity and storage layout


def test_the_job_identity_is_namespace_name_and_uid():
    job = resolve().job
    assert (job.namespace, job.name, job.uid) == (NAMESPACE, "demo", UID)


def test_the_storage_layout_under_the_output_prefix():
    output = resolve({"spec.output.uri": "s3://bucket/prefix/"}).output
    assert output.checkpoints_uri == f"s3://bucket/prefix/{NAMESPACE}/demo/checkpoints/20250304-050607-1b4e28/"
    assert output.artifact_uri == f"s3://bucket/prefix/{NAMESPACE}/demo/20250304-050607-1b4e28/"
    assert output.adapter_name == "demo"
    assert output.version == "20250304-050607-1b4e28"


def test_a_job_created_again_under_the_same_name_gets_checkpoints_of_its_own():
    first = resolve({"metadata.uid": "11111111-aaaa"}).output.checkpoints_uri
    again = resolve({"metadata.uid": "22222222-bbbb"}).output.checkpoints_uri
    assert first != again and first.rsplit("/", 2)[0] == again.rsplit("/", 2)[0]


def test_artifacts_go_under_the_adapter_name_and_checkpoints_under_the_job_name():
    output = resolve({"spec.adapter": {"name": "support-bot"}}).output
    assert output.checkpoints_uri == f"s3://models/out/{NAMESPACE}/demo/checkpoints/20250304-050607-1b4e28/"
    assert output.artifact_uri.startswith(f"s3://models/out/{NAMESPACE}/support-bot/")
    assert output.adapter_name == "support-bot"


def test_the_output_defaults_to_the_operators_output_location():
    settings = Settings(default_output_uri="pvc://platform-out/finetune/")
    output = resolve(settings=settings).output
    assert output.checkpoints_uri == f"pvc://platform-out/finetune/{NAMESPACE}/demo/checkpoints/20250304-050607-1b4e28/"


def test_the_jobs_output_wins_over_the_operators():
    output = resolve({"spec.output.uri": "s3://mine/x"}).output
    assert output.checkpoints_uri.startswith("s3://mine/x/")


def test_without_any_output_location_resolution_fails_naming_spec_output_uri():
    with pytest.raises(ResolutionError) as raised:
        resolve(settings=Settings())
    assert raised.value.field == "spec.output.uri"
    assert str(raised.value).startswith("spec.output.uri: ")
    assert "set spec.output.uri" in str(raised.value)


def test_a_job_without_namespace_resolves_in_default():
    job = FineTuneJob.model_validate(valid_job("demo"))
    config = resolve_trainer_config(job, SETTINGS)
    assert config.job.namespace == "default"
    assert config.output.checkpoints_uri == "s3://models/out/default/demo/checkpoints/v1/"


def test_the_artifact_version_is_the_creation_time_and_part_of_the_uid():
    assert artifact_version(make_job()) == "20250304-050607-1b4e28"


def test_the_artifact_version_sorts_by_creation_time():
    older = make_job({"metadata.creationTimestamp": "2025-03-04T05:06:07Z", "metadata.uid": "ffffffff-0000"})
    newer = make_job({"metadata.creationTimestamp": "2025-12-01T00:00:00Z", "metadata.uid": "00000000-0000"})
    assert artifact_version(older) < artifact_version(newer)


def test_the_artifact_version_without_creation_time_or_uid():
    bare = FineTuneJob.model_validate(valid_job("demo"))
    assert artifact_version(bare) == "v1"
    only_uid = FineTuneJob.model_validate(edited(valid_job("demo"), {"metadata.uid": "abc-def-0123"}))
    assert artifact_version(only_uid) == "abcdef"


def test_the_adapter_name_defaults_to_the_job_name():
    assert adapter_name(make_job()) == "demo"
    assert adapter_name(make_job({"spec.adapter": {"name": "bot"}})) == "bot"


# ---------------------------------------------------------------------------------------------
# progress endpoint


def test_no_progress_endpoint_without_a_progress_url():
    assert resolve().progress is None


def test_the_progress_url_is_per_job():
    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator.system.svc:8443/")
    progress = resolve(settings=settings).progress
    assert progress.url == f"https://operator.system.svc:8443/v1/namespaces/{NAMESPACE}/finetunejobs/demo/progress"
    assert progress.token_file == "/var/run/finetune/progress/token"
    assert progress.ca_file is None


def test_the_progress_ca_file_is_set_when_the_operator_has_a_ca():
    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator")
    config = resolve_trainer_config(make_job(), settings, progress_ca=True)
    assert config.progress.ca_file == "/etc/finetune/progress-ca.crt"


# ---------------------------------------------------------------------------------------------
# the result


def test_the_resolved_config_round_trips_through_json():
    settings = Settings(default_output_uri="s3://models/out", progress_url="https://operator")
    config = resolve({"spec.method": {"type": "qlora", "lora": {"rank": 8}}}, settings)
    assert TrainerConfig.model_validate(config.to_api()) == config


def test_resolution_does_not_change_the_job():
    job = make_job()
    before = copy.deepcopy(job.model_dump())
    resolve_trainer_config(job, SETTINGS)
    assert job.model_dump() == before


def test_resolution_is_deterministic():
    assert resolve().to_api() == resolve().to_api()


# ---------------------------------------------------------------------------------------------
# the revision the preflight pinned


def test_the_training_config_loads_the_revision_the_preflight_resolved():
    job = make_job({"spec.model.revision": "main"})
    config = resolve_trainer_config(job, SETTINGS, model_revision="0123456789abcdef0123456789abcdef01234567")
    assert config.model.revision == "0123456789abcdef0123456789abcdef01234567"


def test_without_a_pinned_revision_the_training_config_keeps_the_specs():
    assert resolve({"spec.model.revision": "v2"}).model.revision == "v2"
