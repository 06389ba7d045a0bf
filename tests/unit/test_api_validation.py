"""The API models refuse every invalid spec of the catalog with an error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from catalog import CATALOG, valid_job
from finetune_core.api import FineTuneJob, FineTuneModel, ModelAdapter, format_validation_error
from pydantic import ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = {"FineTuneJob": FineTuneJob, "ModelAdapter": ModelAdapter, "FineTuneModel": FineTuneModel}


def test_the_catalog_base_manifest_is_valid():
    FineTuneJob.model_validate(valid_job())


@pytest.mark.parametrize("case", CATALOG, ids=lambda case: case.id)
def test_invalid_spec_is_rejected_naming_the_field(case):
    with pytest.raises(ValidationError) as raised:
        FineTuneJob.model_validate(case.manifest())
    messages = format_validation_error(raised.value)
    assert any(case.field in message for message in messages), messages


def test_the_catalog_has_at_least_25_cases():
    assert len(CATALOG) >= 25
    assert len({case.id for case in CATALOG}) == len(CATALOG)


def _example_documents():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document:
                yield pytest.param(document, id=f"{path.name}#{index}")


@pytest.mark.parametrize("document", list(_example_documents()))
def test_every_example_validates(document):
    MODELS[document["kind"]].model_validate(document)


def test_examples_cover_the_documented_use_cases():
    kinds = {}
    for path in EXAMPLES.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] == "FineTuneJob":
                spec = FineTuneJob.model_validate(document).spec
                kinds.setdefault("methods", set()).add(spec.method.type)
                kinds.setdefault("objectives", set()).add(spec.objective)
                kinds.setdefault("nodes", set()).add(spec.resources.nodes)
                kinds.setdefault("queued", set()).add(
                    "kueue.x-k8s.io/queue-name" in document["metadata"].get("labels", {})
                )
    assert kinds["methods"] >= {"lora", "qlora", "full"}
    assert kinds["objectives"] >= {"sft", "pretrain", "dpo"}
    assert 2 in kinds["nodes"]
    assert True in kinds["queued"]


def test_validation_errors_use_the_api_servers_field_paths():
    bad = valid_job()
    bad["spec"]["data"]["train"] = [{"uri": "s3://data/a.jsonl", "weight": 0}]
    with pytest.raises(ValidationError) as raised:
        FineTuneJob.model_validate(bad)
    assert format_validation_error(raised.value)[0].startswith("spec.data.train[0].weight: ")


def test_python_attributes_are_snake_case_and_yaml_is_camel_case():
    job = FineTuneJob.model_validate(valid_job())
    assert job.spec.training.max_seq_length == 2048
    assert job.spec.to_api()["training"]["maxSeqLength"] == 2048
