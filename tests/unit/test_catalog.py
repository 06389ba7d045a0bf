"""The model catalog: a job naming a FineTuneModel gets its model and defaults, and is refused over its limits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from catalog import edited, valid_job
from finetune_core.api import FineTuneJob, FineTuneModel, format_validation_error
from finetune_core.api.finetunejob import ArtifactStatus
from finetune_operator.catalog import (
    DEFAULTS_INVALID,
    LIMIT_EXCEEDED,
    MODEL_NOT_FOUND,
    NAMESPACE_NOT_ALLOWED,
    Refused,
    Resolved,
    labels_needed,
    namespace_allowed,
    resolve,
    selector_matches,
)
from finetune_operator.render import resolve_trainer_config
from finetune_operator.render.modeladapter import render_model_adapter
from finetune_operator.settings import Settings
from pydantic import ValidationError

NAMESPACE = "team-a"
SETTINGS = Settings(default_output_uri="s3://models/out")


def entry(**spec: Any) -> FineTuneModel:
    return FineTuneModel.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneModel",
            "metadata": {"name": "llama-8b"},
            "spec": {"uri": "hf://meta-llama/Llama-3.1-8B", **spec},
        }
    )


def job(edits: dict[str, Any] | None = None):
    """A job naming llama-8b, as the API server stores it (the schema's defaults filled in)."""
    manifest = edited(valid_job(), {"spec.model": {"name": "llama-8b"}, **(edits or {})})
    return FineTuneJob.model_validate(manifest).spec


def resolved(spec, model, labels=None, namespace=NAMESPACE) -> Resolved:
    outcome = resolve(spec, model, namespace, labels or {})
    assert isinstance(outcome, Resolved), outcome
    return outcome


def refused(spec, model, labels=None, namespace=NAMESPACE) -> Refused:
    outcome = resolve(spec, model, namespace, labels or {})
    assert isinstance(outcome, Refused), outcome
    return outcome


# ---------------------------------------------------------------------------------------------
# the model


def test_the_entry_gives_the_uri_revision_and_serving_name():
    spec = resolved(job(), entry(revision="abc123", servingName="llama-3.1-8b")).spec
    assert spec.model.uri == "hf://meta-llama/Llama-3.1-8B"
    assert spec.model.revision == "abc123"
    assert spec.model.served_name == "llama-3.1-8b"


def test_the_effective_spec_names_no_catalog_model_so_it_renders_like_a_uri_job():
    assert resolved(job(), entry()).spec.model.name is None


def test_the_credentials_are_the_secret_of_that_name_in_the_jobs_namespace():
    spec = resolved(job(), entry(credentialsSecretRef={"name": "hf-token"})).spec
    assert spec.model.credentials_secret_ref.name == "hf-token"


def test_an_entry_without_credentials_gives_none():
    assert resolved(job(), entry()).spec.model.credentials_secret_ref is None


def test_the_message_names_the_model_and_its_revision():
    message = resolved(job(), entry(revision="abc123")).message
    assert message == "FineTuneModel llama-8b: hf://meta-llama/Llama-3.1-8B at revision abc123"


def test_the_rest_of_the_spec_is_the_jobs():
    spec = job({"spec.training": {"learningRate": 0.001, "epochs": 2}})
    effective = resolved(spec, entry()).spec
    assert effective.data == spec.data
    assert effective.training == spec.training
    assert effective.evaluation == spec.evaluation


def test_a_job_with_a_uri_is_not_resolved_by_the_catalog():
    with pytest.raises(ValueError):
        resolve(FineTuneJob.model_validate(valid_job()).spec, entry(), NAMESPACE, {})


def test_an_unknown_model_is_refused_as_not_found():
    outcome = refused(job(), None)
    assert outcome.reason == MODEL_NOT_FOUND
    assert "FineTuneModel llama-8b not found" in outcome.message


def effective_job(spec) -> FineTuneJob:
    return FineTuneJob.model_validate(edited(valid_job(), {"metadata.namespace": NAMESPACE})).model_copy(
        update={"spec": spec}
    )


def test_the_trainer_is_configured_with_the_catalog_model():
    model = entry(revision="abc123", servingName="llama-3.1-8b", credentialsSecretRef={"name": "hf-token"})
    config = resolve_trainer_config(effective_job(resolved(job(), model).spec), SETTINGS)
    assert (config.model.uri, config.model.revision, config.model.served_name) == (
        "hf://meta-llama/Llama-3.1-8B",
        "abc123",
        "llama-3.1-8b",
    )
    assert config.model.credentials_secret_ref.name == "hf-token"


def test_the_trainer_never_gets_a_catalog_name_in_place_of_a_uri():
    with pytest.raises(ValidationError, match=r"model\.uri must be resolved"):
        resolve_trainer_config(effective_job(job()), SETTINGS)


def test_the_published_adapter_names_the_catalog_models_uri_and_serving_name():
    spec = resolved(job(), entry(revision="abc123", servingName="llama-3.1-8b")).spec
    artifact = ArtifactStatus(uri="s3://models/out/team-a/catalog-job/v1/", digest="sha256:" + "0" * 64, size_bytes=1)
    adapter = render_model_adapter(effective_job(spec), artifact, None, SETTINGS, ["q_proj"], None)
    assert adapter["spec"]["baseModel"] == {
        "uri": "hf://meta-llama/Llama-3.1-8B",
        "revision": "abc123",
        "servedName": "llama-3.1-8b",
    }


# ---------------------------------------------------------------------------------------------
# defaults


def test_a_job_at_the_built_in_method_gets_the_default_method():
    method = {"type": "qlora", "lora": {"rank": 8, "alpha": 16}}
    spec = resolved(job(), entry(defaults={"method": method})).spec
    assert spec.method.type == "qlora"
    assert spec.method.lora.rank == 8 and spec.method.lora.alpha == 16


def test_a_job_that_sets_its_method_keeps_it():
    spec = job({"spec.method": {"type": "lora", "lora": {"rank": 32}}})
    effective = resolved(spec, entry(defaults={"method": {"type": "lora", "lora": {"rank": 8}}})).spec
    assert effective.method.lora.rank == 32


def test_a_job_at_the_built_in_max_seq_length_gets_the_default():
    assert resolved(job(), entry(defaults={"maxSeqLength": 4096})).spec.training.max_seq_length == 4096


def test_a_job_that_sets_its_max_seq_length_keeps_it():
    spec = job({"spec.training": {"maxSeqLength": 512}})
    assert resolved(spec, entry(defaults={"maxSeqLength": 4096})).spec.training.max_seq_length == 512


def test_resources_left_at_the_built_in_defaults_get_the_defaults():
    defaults = {"nodes": 2, "gpusPerNode": 4, "cpu": "16", "memory": "128Gi", "sharedMemory": "8Gi"}
    spec = job({"spec.resources": {}})
    resources = resolved(spec, entry(defaults={"resources": defaults})).spec.resources
    assert (resources.nodes, resources.gpus_per_node) == (2, 4)
    assert (resources.cpu, resources.memory, resources.shared_memory) == ("16", "128Gi", "8Gi")


def test_resources_the_job_sets_are_kept_field_by_field():
    spec = job({"spec.resources": {"gpusPerNode": 2, "memory": "32Gi"}})
    resources = resolved(spec, entry(defaults={"resources": {"gpusPerNode": 8, "memory": "64Gi", "cpu": "4"}})).spec
    assert (resources.resources.gpus_per_node, resources.resources.memory) == (2, "32Gi")
    assert resources.resources.cpu == "4"


def test_no_defaults_leave_the_spec_as_the_job_gave_it():
    spec = job()
    effective = resolved(spec, entry()).spec
    assert effective.model_copy(update={"model": spec.model}) == spec


def test_defaults_that_break_a_rule_of_the_spec_are_refused_naming_the_rule():
    # qlora needs GPUs: a default of qlora on a CPU-only job cannot run.
    spec = job({"spec.resources": {"gpusPerNode": 0}})
    outcome = refused(spec, entry(defaults={"method": {"type": "qlora", "lora": {"rank": 8}}}))
    assert outcome.reason == DEFAULTS_INVALID
    assert "FineTuneModel llama-8b" in outcome.message and "qlora needs GPUs" in outcome.message


# ---------------------------------------------------------------------------------------------
# limits


@pytest.mark.parametrize(
    ("edits", "limits", "message"),
    [
        (
            {"spec.resources": {"nodes": 2, "gpusPerNode": 8}},
            {"maxGPUs": 8},
            "spec.resources.gpus 16 (nodes 2 x gpusPerNode 8) exceeds FineTuneModel llama-8b limits.maxGPUs 8",
        ),
        (
            {"spec.resources": {"nodes": 4, "gpusPerNode": 0}},
            {"maxNodes": 2},
            "spec.resources.nodes 4 exceeds FineTuneModel llama-8b limits.maxNodes 2",
        ),
        (
            {"spec.training": {"epochs": 6}},
            {"maxEpochs": 5},
            "spec.training.epochs 6 exceeds FineTuneModel llama-8b limits.maxEpochs 5",
        ),
        (
            {"spec.training": {"maxSteps": 1001}},
            {"maxSteps": 1000},
            "spec.training.maxSteps 1001 exceeds FineTuneModel llama-8b limits.maxSteps 1000",
        ),
        (
            {"spec.training": {"maxSeqLength": 8192}},
            {"maxSeqLength": 4096},
            "spec.training.maxSeqLength 8192 exceeds FineTuneModel llama-8b limits.maxSeqLength 4096",
        ),
        (
            {"spec.method": {"type": "lora", "lora": {"rank": 128}}},
            {"maxLoraRank": 64},
            "spec.method.lora.rank 128 exceeds FineTuneModel llama-8b limits.maxLoraRank 64",
        ),
        (
            {"spec.method": {"type": "full"}},
            {"allowedMethods": ["lora", "qlora"]},
            "spec.method.type full is not in FineTuneModel llama-8b limits.allowedMethods (lora, qlora)",
        ),
    ],
)
def test_a_job_over_a_limit_is_refused_naming_the_field_the_model_and_the_limit(edits, limits, message):
    outcome = refused(job(edits), entry(limits=limits))
    assert outcome.reason == LIMIT_EXCEEDED
    assert outcome.message == message


@pytest.mark.parametrize(
    ("edits", "limits"),
    [
        ({"spec.resources": {"nodes": 2, "gpusPerNode": 4}}, {"maxGPUs": 8}),
        ({"spec.resources": {"nodes": 2, "gpusPerNode": 0}}, {"maxNodes": 2}),
        ({"spec.training": {"epochs": 5}}, {"maxEpochs": 5}),
        ({"spec.training": {"maxSteps": 1000}}, {"maxSteps": 1000}),
        ({"spec.training": {"maxSeqLength": 4096}}, {"maxSeqLength": 4096}),
        ({"spec.method": {"type": "lora", "lora": {"rank": 64}}}, {"maxLoraRank": 64}),
        ({"spec.method": {"type": "full"}}, {"maxLoraRank": 16}),
        ({"spec.method": {"type": "lora", "lora": {"rank": 8}}}, {"allowedMethods": ["lora", "qlora"]}),
    ],
)
def test_a_job_at_a_limit_is_resolved(edits, limits):
    resolved(job(edits), entry(limits=limits))


def test_the_rank_limit_does_not_apply_to_full_fine_tuning():
    model = entry(defaults={"method": {"type": "full"}}, limits={"maxLoraRank": 8})
    assert resolved(job(), model).spec.method.type == "full"


def test_a_job_without_epochs_or_steps_counts_one_epoch():
    resolved(job(), entry(limits={"maxEpochs": 1}))
    assert refused(job(), entry(limits={"maxEpochs": 0.5})).reason == LIMIT_EXCEEDED


def test_the_built_in_lora_rank_counts_when_the_job_gives_lora_settings_without_one():
    model = entry(defaults={"method": {"lora": {"rank": 8}}}, limits={"maxLoraRank": 8})
    outcome = refused(job({"spec.method": {"type": "lora", "lora": {"alpha": 64}}}), model)
    assert outcome.message.startswith("spec.method.lora.rank 16 exceeds")


def test_steps_cannot_step_around_an_epochs_limit():
    outcome = refused(job({"spec.training": {"maxSteps": 10_000_000}}), entry(limits={"maxEpochs": 3}))
    assert "spec.training.maxSteps is not bounded by FineTuneModel llama-8b limits" in outcome.message


def test_epochs_cannot_step_around_a_steps_limit():
    outcome = refused(job({"spec.training": {"epochs": 100}}), entry(limits={"maxSteps": 100}))
    assert "spec.training.epochs is not bounded by FineTuneModel llama-8b limits" in outcome.message


def test_limits_are_checked_after_the_defaults():
    # 8 GPUs per node by default fit maxGPUs 8 on one node; the job's second node does not.
    model = entry(defaults={"resources": {"gpusPerNode": 8}}, limits={"maxGPUs": 8})
    outcome = refused(job({"spec.resources": {"nodes": 2}}), model)
    assert outcome.message.startswith("spec.resources.gpus 16 (nodes 2 x gpusPerNode 8) exceeds")


def test_every_limit_exceeded_is_named():
    spec = job({"spec.resources": {"nodes": 4, "gpusPerNode": 8}, "spec.method": {"type": "full"}})
    outcome = refused(spec, entry(limits={"maxGPUs": 8, "maxNodes": 2, "allowedMethods": ["lora"]}))
    assert outcome.message.count("exceeds") == 2 and "allowedMethods" in outcome.message


def test_no_limits_allow_everything():
    resolved(job({"spec.resources": {"nodes": 256, "gpusPerNode": 16}, "spec.training": {"maxSteps": 5}}), entry())


def test_a_finished_job_keeps_its_model_whatever_the_limits_and_namespaces_say_now():
    model = entry(defaults={"resources": {"gpusPerNode": 0}}, limits={"maxGPUs": 0, "namespaces": ["team-b"]})
    outcome = resolve(job({"spec.resources": {"gpusPerNode": 2}}), model, NAMESPACE, {}, enforce=False)
    assert isinstance(outcome, Resolved) and outcome.spec.model.uri == "hf://meta-llama/Llama-3.1-8B"


# ---------------------------------------------------------------------------------------------
# namespaces


def test_every_namespace_may_use_a_model_that_names_none():
    resolved(job(), entry(), namespace="anyone")


def test_a_listed_namespace_may_use_the_model():
    resolved(job(), entry(limits={"namespaces": ["team-a", "team-b"]}))


def test_an_unlisted_namespace_is_refused():
    outcome = refused(job(), entry(limits={"namespaces": ["team-b"]}))
    assert outcome.reason == NAMESPACE_NOT_ALLOWED
    assert outcome.message.startswith("namespace team-a may not use FineTuneModel llama-8b")


def test_a_namespace_matching_the_selector_may_use_the_model():
    model = entry(limits={"namespaceSelector": {"matchLabels": {"tier": "gpu"}}})
    resolved(job(), model, labels={"tier": "gpu"})
    assert refused(job(), model, labels={"tier": "cpu"}).reason == NAMESPACE_NOT_ALLOWED


def test_listed_or_selected_is_enough():
    model = entry(limits={"namespaces": ["team-b"], "namespaceSelector": {"matchLabels": {"tier": "gpu"}}})
    resolved(job(), model, labels={"tier": "gpu"})
    resolved(job(), model, namespace="team-b")
    assert refused(job(), model).reason == NAMESPACE_NOT_ALLOWED


def test_the_namespace_labels_are_needed_only_where_a_selector_decides():
    limits = entry(limits={"namespaces": ["team-b"], "namespaceSelector": {"matchLabels": {"tier": "gpu"}}}).spec.limits
    assert labels_needed(limits, "team-a")
    assert not labels_needed(limits, "team-b")  # listed: allowed whatever its labels
    assert not labels_needed(entry(limits={"namespaces": ["team-b"]}).spec.limits, "team-a")
    assert not labels_needed(entry().spec.limits, "team-a")


def test_namespace_is_checked_before_limits():
    # Whoever may not use the model learns nothing about its limits.
    model = entry(defaults={"resources": {"gpusPerNode": 0}}, limits={"namespaces": ["team-b"], "maxGPUs": 0})
    assert refused(job({"spec.resources": {"gpusPerNode": 2}}), model).reason == NAMESPACE_NOT_ALLOWED


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchLabels": {"a": "1"}}, {}, False),
        ({"matchLabels": {"a": "1", "b": "2"}}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {"a": "3"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        (
            {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
            {"a": "1"},
            False,
        ),
    ],
)
def test_label_selectors_have_kubernetes_semantics(selector, labels, matches):
    limits = entry(limits={"namespaceSelector": selector}).spec.limits
    assert selector_matches(limits.namespace_selector, labels) is matches
    assert namespace_allowed(limits, "elsewhere", labels) is matches


# ---------------------------------------------------------------------------------------------
# the FineTuneModel API


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.uri"),
        ({"uri": "http://example.com/model"}, "spec.uri"),
        ({"uri": "s3://bucket/../other"}, "spec.uri"),
        ({"uri": "hf://a/b", "limits": {"maxGPUs": -1}}, "spec.limits.maxGPUs"),
        ({"uri": "hf://a/b", "limits": {"allowedMethods": ["prefix"]}}, "spec.limits.allowedMethods[0]"),
        ({"uri": "hf://a/b", "limits": {"namespaces": ["Team_A"]}}, "spec.limits.namespaces[0]"),
        (
            {
                "uri": "hf://a/b",
                "limits": {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            },
            "spec.limits.namespaceSelector.matchExpressions[0]",
        ),
        (
            {
                "uri": "hf://a/b",
                "limits": {
                    "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
                },
            },
            "spec.limits.namespaceSelector.matchExpressions[0]",
        ),
        ({"uri": "hf://a/b", "defaults": {"method": {"type": "qlora"}}}, "spec.defaults.method"),
        ({"uri": "hf://a/b", "defaults": {"resources": {"memory": "0"}}}, "spec.defaults.resources.memory"),
        ({"uri": "hf://a/b", "defaults": {"maxSeqLength": 8}}, "spec.defaults.maxSeqLength"),
        ({"uri": "hf://a/b", "credentialsSecretRef": {"name": "../x"}}, "spec.credentialsSecretRef.name"),
        ({"uri": "hf://a/b", "limits": {"maxGpus": 8}}, "spec.limits.maxGpus"),
        (
            {"uri": "hf://a/b", "defaults": {"resources": {"nodes": 4}}, "limits": {"maxNodes": 2}},
            "spec: spec.defaults.resources.nodes exceeds spec.limits.maxNodes",
        ),
        (
            {"uri": "hf://a/b", "defaults": {"resources": {"nodes": 2, "gpusPerNode": 8}}, "limits": {"maxGPUs": 8}},
            "spec: spec.defaults.resources (nodes times gpusPerNode) exceeds spec.limits.maxGPUs",
        ),
        (
            {"uri": "hf://a/b", "defaults": {"maxSeqLength": 8192}, "limits": {"maxSeqLength": 4096}},
            "spec: spec.defaults.maxSeqLength exceeds spec.limits.maxSeqLength",
        ),
        (
            {"uri": "hf://a/b", "defaults": {"method": {"type": "full"}}, "limits": {"allowedMethods": ["lora"]}},
            "spec: spec.defaults.method.type is not in spec.limits.allowedMethods",
        ),
        (
            {"uri": "hf://a/b", "defaults": {"method": {"lora": {"rank": 64}}}, "limits": {"maxLoraRank": 32}},
            "spec: spec.defaults.method.lora.rank exceeds spec.limits.maxLoraRank",
        ),
        # Where the model gives no default, the built-in one must fit: lora rank 16, 2048 tokens, 1 GPU.
        ({"uri": "hf://a/b", "limits": {"maxLoraRank": 8}}, "spec: spec.defaults.method.lora.rank exceeds"),
        ({"uri": "hf://a/b", "limits": {"maxSeqLength": 1024}}, "spec: spec.defaults.maxSeqLength exceeds"),
        ({"uri": "hf://a/b", "limits": {"maxGPUs": 0}}, "spec: spec.defaults.resources (nodes times gpusPerNode)"),
        ({"uri": "hf://a/b", "limits": {"allowedMethods": ["full"]}}, "spec: spec.defaults.method.type is not in"),
    ],
)
def test_an_invalid_finetunemodel_is_refused_naming_the_field(spec, field):
    manifest = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneModel", "metadata": {"name": "m"}, "spec": spec}
    with pytest.raises(ValidationError) as raised:
        FineTuneModel.model_validate(copy.deepcopy(manifest))
    messages = format_validation_error(raised.value)
    assert any(message.startswith(field) for message in messages), messages


@pytest.mark.parametrize(
    "spec",
    [
        {"defaults": {"resources": {"nodes": 2, "gpusPerNode": 4}}, "limits": {"maxGPUs": 8, "maxNodes": 2}},
        {"defaults": {"resources": {"gpusPerNode": 8}}, "limits": {"maxGPUs": 8}},
        {"defaults": {"maxSeqLength": 4096}, "limits": {"maxSeqLength": 4096}},
        {
            "defaults": {"method": {"type": "qlora", "lora": {"rank": 32}}},
            "limits": {"allowedMethods": ["qlora"], "maxLoraRank": 32},
        },
        {"defaults": {"method": {"type": "full"}}, "limits": {"maxLoraRank": 8}},
        {"defaults": {"resources": {"nodes": 4, "gpusPerNode": 0}}, "limits": {"maxGPUs": 0}},
        {"limits": {"maxGPUs": 1, "maxNodes": 1, "maxSeqLength": 2048, "maxLoraRank": 16, "allowedMethods": ["lora"]}},
    ],
)
def test_defaults_within_the_limits_are_valid(spec):
    entry(**spec)


def test_the_gpu_limit_is_spelled_max_gpus_in_capitals_as_written_back():
    assert entry(limits={"maxGPUs": 4}).spec.limits.to_api()["maxGPUs"] == 4
