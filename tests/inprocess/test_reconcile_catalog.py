"""reconcile() of jobs that name a FineTuneModel: refused over the model's limits or outside its namespaces
(no children), waiting for a model that does not exist yet, and resolved from the watch-fed cache."""

from __future__ import annotations

import pytest
from catalog import edited
from finetune_core.api import TrainerConfig
from finetune_operator.kube import CONFIGMAPS, FINETUNEMODELS, JOBS, NAMESPACES
from operator_harness import condition, training_job


@pytest.fixture
def models(harness):
    """Create FineTuneModels (cluster-scoped: named after the test's namespace, deleted afterwards)."""
    created: list[str] = []

    def create(suffix: str, **spec) -> str:
        name = f"{harness.namespace}-{suffix}"
        model = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneModel", "metadata": {"name": name}}
        harness.create({**model, "spec": {"uri": "s3://models/tiny-llama/", **spec}})
        created.append(name)
        return name

    yield create
    for name in created:
        harness.admin.delete(FINETUNEMODELS, None, name)


def catalog_job(name: str, namespace: str, model: str, **edits) -> dict:
    manifest = training_job(name, namespace, model={"name": model})
    manifest["spec"]["resources"] = {"gpusPerNode": 1}
    return edited(manifest, edits)


def test_a_job_over_a_limit_is_refused_naming_the_limit_and_gets_no_children(harness, models):
    model = models("small", limits={"maxGPUs": 8, "allowedMethods": ["lora", "qlora"]})
    harness.create(
        catalog_job("greedy", harness.namespace, model, **{"spec.resources": {"nodes": 2, "gpusPerNode": 8}})
    )

    harness.reconcile("greedy")

    ftj = harness.ftj("greedy")
    refused = condition(ftj, "ModelResolved")
    assert (refused["status"], refused["reason"]) == ("False", "CatalogLimitExceeded")
    assert refused["message"] == (
        f"spec.resources.gpus 16 (nodes 2 x gpusPerNode 8) exceeds FineTuneModel {model} limits.maxGPUs 8"
    )
    assert condition(ftj, "Created")["reason"] == "CatalogLimitExceeded"
    assert all(child is None for child in harness.children("greedy").values())
    assert "CatalogLimitExceeded" in {e["reason"] for e in harness.events("greedy")}
    harness.reconcile("greedy")
    assert harness.sent() == [], "a refusal already recorded costs nothing at resync"


def test_a_namespace_the_model_does_not_allow_is_refused_until_it_is_labelled(harness, models):
    selector = {"matchLabels": {"catalog/tier": "gold"}}
    model = models("gated", limits={"namespaces": ["someone-else"], "namespaceSelector": selector})
    harness.create(catalog_job("outsider", harness.namespace, model))

    harness.reconcile("outsider")

    refused = condition(harness.ftj("outsider"), "ModelResolved")
    assert refused["reason"] == "NamespaceNotAllowed"
    assert refused["message"].startswith(f"namespace {harness.namespace} may not use FineTuneModel {model}")
    assert harness.get(JOBS, "outsider") is None
    assert ("get", "namespaces", "200") in harness.sent(), "the selector decides on the namespace's own labels"

    # Labelling namespaces is the platform's: once it does, the job proceeds.
    harness.admin.merge_patch(NAMESPACES, None, harness.namespace, {"metadata": {"labels": {"catalog/tier": "gold"}}})
    harness.reconcile("outsider")

    assert condition(harness.ftj("outsider"), "ModelResolved")["status"] == "True"
    assert harness.get(JOBS, "outsider") is not None


def test_an_unknown_model_is_not_found_and_resolves_from_the_cache_once_created(harness, models):
    model = f"{harness.namespace}-later"
    harness.create(catalog_job("patient", harness.namespace, model))

    harness.reconcile("patient")

    missing = condition(harness.ftj("patient"), "ModelResolved")
    assert (missing["status"], missing["reason"]) == ("False", "ModelNotFound")
    assert harness.get(JOBS, "patient") is None

    models("later")
    harness.reconcile("patient")

    assert condition(harness.ftj("patient"), "ModelResolved")["status"] == "True"
    assert harness.get(JOBS, "patient") is not None
    assert not [request for request in harness.sent() if request[1] == "finetunemodels"], "read from the cache"


def test_a_job_naming_a_catalog_model_is_trained_with_its_model_and_defaults(harness, models):
    model = models(
        "tiny",
        revision="v1",
        credentialsSecretRef={"name": "model-token"},
        servingName="tiny-llama",
        defaults={
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16}},
            "maxSeqLength": 512,
            "resources": {"gpusPerNode": 2, "cpu": "4", "memory": "8Gi"},
        },
    )
    harness.create(catalog_job("tuned", harness.namespace, model))

    harness.reconcile("tuned")

    # The model's Secret is the one of that name in the job's own namespace: the job waits for it there.
    blocked = condition(harness.ftj("tuned"), "ReferencesResolved")
    assert blocked["reason"] == "SecretNotFound" and "model-token" in blocked["message"]
    assert harness.get(JOBS, "tuned") is None

    harness.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-token"}})
    harness.reconcile("tuned")

    resolved = condition(harness.ftj("tuned"), "ModelResolved")
    assert resolved["reason"] == "Resolved"
    assert resolved["message"] == f"FineTuneModel {model}: s3://models/tiny-llama/ at revision v1"
    config = TrainerConfig.model_validate_json(harness.get(CONFIGMAPS, "tuned-config")["data"]["config.json"])
    assert (config.model.uri, config.model.revision, config.model.served_name) == (
        "s3://models/tiny-llama/",
        "v1",
        "tiny-llama",
    )
    assert config.model.credentials_secret_ref.name == "model-token" and config.model.name is None
    assert (config.method.lora.rank, config.method.lora.alpha) == (8, 16)
    assert config.training.max_seq_length == 512
    (trainer,) = harness.get(JOBS, "tuned")["spec"]["template"]["spec"]["containers"]
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "8Gi"}
    # What the user wrote stays as written: the operator never writes spec.
    assert harness.ftj("tuned")["spec"]["model"] == {"name": model}
