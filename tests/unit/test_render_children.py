"""The small children (ServiceAccount, ConfigMap, headless Service) and the objects a job refers to."""

from __future__ import annotations

import json
from typing import Any

from catalog import edited, valid_job
from finetune_core.api import FineTuneJob, TrainerConfig
from finetune_operator.render import (
    Reference,
    claims,
    config_data,
    credential_secrets,
    data_hash,
    references,
    render_config_map,
    render_pod_template,
    render_service,
    render_service_account,
    resolve_trainer_config,
)
from finetune_operator.settings import Settings

NAMESPACE = "team-a"
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
SETTINGS = Settings(default_output_uri="s3://models/out")
OWNER = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "name": "demo",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


def make_job(edits: dict[str, Any] | None = None) -> FineTuneJob:
    manifest = edited(valid_job("demo"), {"metadata.namespace": NAMESPACE, "metadata.uid": UID, **(edits or {})})
    return FineTuneJob.model_validate(manifest)


# ---------------------------------------------------------------------------------------------
# ServiceAccount


def test_the_service_account_has_no_token_and_is_owned_by_the_job():
    account = render_service_account(make_job())
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == "demo-trainer"
    assert account["metadata"]["namespace"] == NAMESPACE
    assert account["metadata"]["ownerReferences"] == [OWNER]
    assert account["automountServiceAccountToken"] is False


def test_no_service_account_is_created_when_the_user_names_one():
    assert render_service_account(make_job({"spec.template.serviceAccountName": "mine"})) is None


# ---------------------------------------------------------------------------------------------
# ConfigMap


def test_the_config_map_holds_the_resolved_config_as_json():
    job = make_job()
    config = resolve_trainer_config(job, SETTINGS)
    config_map = render_config_map(job, config, None)
    assert config_map["metadata"]["name"] == "demo-config"
    assert config_map["metadata"]["ownerReferences"] == [OWNER]
    assert set(config_map["data"]) == {"config.json"}
    assert TrainerConfig.model_validate(json.loads(config_map["data"]["config.json"])) == config


def test_the_config_map_carries_the_progress_ca_when_given():
    job = make_job()
    config = resolve_trainer_config(job, SETTINGS)
    data = render_config_map(job, config, "-----BEGIN CERTIFICATE-----\n")["data"]
    assert data["progress-ca.crt"] == "-----BEGIN CERTIFICATE-----\n"


def test_config_data_is_deterministic_and_its_hash_follows_the_content():
    config = resolve_trainer_config(make_job(), SETTINGS)
    assert config_data(config, None) == config_data(config, None)
    assert data_hash(config_data(config, None)) == data_hash(config_data(config, None))
    assert data_hash(config_data(config, None)) != data_hash(config_data(config, "ca"))
    other = resolve_trainer_config(make_job({"spec.training": {"learningRate": 0.001}}), SETTINGS)
    assert data_hash(config_data(other, None)) != data_hash(config_data(config, None))


def test_the_data_hash_ignores_key_order():
    assert data_hash({"a": "1", "b": "2"}) == data_hash({"b": "2", "a": "1"})


# ---------------------------------------------------------------------------------------------
# Service


def test_the_service_is_headless_and_selects_the_jobs_pods():
    job = make_job()
    service = render_service(job, SETTINGS)
    assert service["metadata"]["name"] == "demo"
    assert service["metadata"]["ownerReferences"] == [OWNER]
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = render_pod_template(job, SETTINGS)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_service_publishes_pods_before_they_are_ready():
    assert render_service(make_job(), SETTINGS)["spec"]["publishNotReadyAddresses"] is True


def test_the_service_names_the_pods_subdomain():
    job = make_job()
    assert render_pod_template(job, SETTINGS)["spec"]["subdomain"] == render_service(job, SETTINGS)["metadata"]["name"]


def test_the_service_exposes_the_rendezvous_port():
    settings = Settings(default_output_uri="s3://models/out", rendezvous_port=30123)
    (port,) = render_service(make_job(), settings)["spec"]["ports"]
    assert port == {"name": "rendezvous", "port": 30123, "targetPort": 30123}


def test_children_carry_the_managed_by_labels():
    job = make_job()
    config = resolve_trainer_config(job, SETTINGS)
    for child in (render_service_account(job), render_config_map(job, config, None), render_service(job, SETTINGS)):
        labels = child["metadata"]["labels"]
        assert labels["finetune.dev/job"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "finetune-operator"


# ---------------------------------------------------------------------------------------------
# claims


def test_claims_are_the_pvcs_of_every_uri_and_only_the_output_is_writable():
    job = make_job(
        {
            "spec.model.uri": "pvc://models/llama",
            "spec.data.train": [{"uri": "pvc://datasets/a.jsonl"}, {"uri": "s3://bucket/b.jsonl"}],
            "spec.data.eval": {"uri": "pvc://evals/e.jsonl"},
            "spec.data.general": {"uri": "pvc://general/g.txt"},
            "spec.output.uri": "pvc://outputs/runs",
        }
    )
    assert claims(job, SETTINGS) == {
        "datasets": False,
        "evals": False,
        "general": False,
        "models": False,
        "outputs": True,
    }


def test_claims_are_sorted_by_name():
    job = make_job({"spec.data.train": [{"uri": "pvc://zeta/a"}, {"uri": "pvc://alpha/b"}]})
    assert list(claims(job, SETTINGS)) == ["alpha", "zeta"]


def test_a_claim_that_is_read_and_written_is_writable():
    job = make_job({"spec.model.uri": "pvc://shared/base", "spec.output.uri": "pvc://shared/out"})
    assert claims(job, SETTINGS) == {"shared": True}


def test_the_default_output_claim_is_writable():
    assert claims(make_job(), Settings(default_output_uri="pvc://platform-out/ft")) == {"platform-out": True}


def test_a_claim_without_a_path_is_the_claim_itself():
    assert claims(make_job({"spec.model.uri": "pvc://models"}), SETTINGS) == {"models": False}


def test_no_pvc_uris_no_claims():
    assert claims(make_job(), SETTINGS) == {}


# ---------------------------------------------------------------------------------------------
# credential secrets


def test_credential_secrets_by_purpose():
    job = make_job(
        {
            "spec.model.credentialsSecretRef": {"name": "hf"},
            "spec.data.credentialsSecretRef": {"name": "data"},
            "spec.output": {"uri": "s3://out/x", "credentialsSecretRef": {"name": "out"}},
        }
    )
    assert credential_secrets(job, SETTINGS) == {"model": "hf", "data": "data", "output": "out"}


def test_the_default_output_secret_applies_to_the_default_output_only():
    settings = Settings(default_output_uri="s3://platform/out", default_output_secret="platform-s3")
    assert credential_secrets(make_job(), settings) == {"output": "platform-s3"}
    assert credential_secrets(make_job({"spec.output.uri": "s3://mine/out"}), settings) == {}


def test_the_users_output_secret_wins_over_the_default():
    settings = Settings(default_output_uri="s3://platform/out", default_output_secret="platform-s3")
    job = make_job({"spec.output.credentialsSecretRef": {"name": "mine"}})
    assert credential_secrets(job, settings) == {"output": "mine"}


# ---------------------------------------------------------------------------------------------
# references


def test_references_name_each_object_and_the_field_that_names_it():
    job = make_job(
        {
            "spec.model": {"uri": "pvc://models/llama", "credentialsSecretRef": {"name": "hf"}},
            "spec.data.credentialsSecretRef": {"name": "data"},
            "spec.output": {"uri": "s3://out/x", "credentialsSecretRef": {"name": "out"}},
            "spec.template": {"imagePullSecrets": [{"name": "registry"}], "serviceAccountName": "trainer-sa"},
        }
    )
    assert references(job, SETTINGS) == [
        Reference("Secret", "hf", "spec.model.credentialsSecretRef"),
        Reference("Secret", "data", "spec.data.credentialsSecretRef"),
        Reference("Secret", "out", "spec.output.credentialsSecretRef"),
        Reference("Secret", "registry", "spec.template.imagePullSecrets"),
        Reference("PersistentVolumeClaim", "models", "a pvc:// URI"),
        Reference("ServiceAccount", "trainer-sa", "spec.template.serviceAccountName"),
    ]


def test_the_default_output_secret_is_referenced_as_the_operators():
    settings = Settings(default_output_uri="s3://platform/out", default_output_secret="platform-s3")
    assert references(make_job(), settings) == [Reference("Secret", "platform-s3", "operator default output")]


def test_an_object_referenced_twice_is_listed_once_with_its_first_field():
    job = make_job(
        {
            "spec.model.credentialsSecretRef": {"name": "shared"},
            "spec.data.credentialsSecretRef": {"name": "shared"},
            "spec.template.imagePullSecrets": [{"name": "shared"}],
        }
    )
    assert references(job, SETTINGS) == [Reference("Secret", "shared", "spec.model.credentialsSecretRef")]


def test_a_job_that_refers_to_nothing_has_no_references():
    assert references(make_job(), SETTINGS) == []


def test_a_reference_describes_itself_for_condition_messages():
    assert Reference("Secret", "hf", "spec.model.credentialsSecretRef").describe() == (
        "Secret hf (spec.model.credentialsSecretRef)"
    )


def test_secrets_config_maps_and_claims_of_the_pod_template_are_references_unless_optional():
    job = make_job(
        {
            "spec.template": {
                "env": [
                    {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                    {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "opt", "key": "k", "optional": True}}},
                ],
                "volumes": [
                    {"name": "certs", "secret": {"secretName": "ca-bundle"}},
                    {"name": "extra", "configMap": {"name": "extra-config"}},
                    {"name": "datasets", "persistentVolumeClaim": {"claimName": "shared-datasets"}},
                ],
            }
        }
    )
    assert references(job, SETTINGS) == [
        Reference("Secret", "wandb", "spec.template.env[0].valueFrom.secretKeyRef"),
        Reference("ConfigMap", "settings", "spec.template.env[1].valueFrom.configMapKeyRef"),
        Reference("Secret", "ca-bundle", "spec.template.volumes[0].secret"),
        Reference("ConfigMap", "extra-config", "spec.template.volumes[1].configMap"),
        Reference("PersistentVolumeClaim", "shared-datasets", "spec.template.volumes[2].persistentVolumeClaim"),
    ]
