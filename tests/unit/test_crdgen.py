"""The CRDs in crds/ are generated from the API models, structural, documented and CEL-cost bounded."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_core.api import (
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    FineTuneModelSpec,
    ModelAdapterSpec,
    ModelAdapterStatus,
    finetunejob,
    finetunemodel,
)
from finetune_operator import crdgen
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
FINETUNEJOBS = "finetune.dev_finetunejobs.yaml"
MODELADAPTERS = "finetune.dev_modeladapters.yaml"
FINETUNEMODELS = "finetune.dev_finetunemodels.yaml"


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) ``node``: properties, array items and map values."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every named property below ``node`` (through arrays and maps), with its path."""
    for name, sub in (node.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    if "items" in node:
        yield from _properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _properties(node["additionalProperties"], f"{path}{{}}")


def _spec_and_status_nodes() -> list[tuple[str, dict[str, Any]]]:
    nodes = []
    for file_name, crd in crdgen.all_crds().items():
        schema = _schema(crd)
        for part in ("spec", "status")[: len(schema["properties"]) - 3]:  # FineTuneModel has no status
            nodes += [(f"{file_name}:{path}", node) for path, node in _walk(schema["properties"][part], part)]
    return nodes


def _at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


# ---------------------------------------------------------------------------------------------
# staleness


@pytest.mark.parametrize("file_name", sorted(crdgen.all_crds()))
def test_the_committed_crd_is_what_the_generator_writes(file_name):
    committed = (CRDS / file_name).read_text()
    assert committed == crdgen.render(crdgen.all_crds()[file_name]), f"crds/{file_name} is stale: run `make crds`"


def test_crds_directory_holds_exactly_the_generated_crds():
    assert sorted(p.name for p in CRDS.iterdir()) == sorted(crdgen.all_crds())


def test_the_generator_check_mode_reports_a_stale_directory(tmp_path, capsys):
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert "make crds" in capsys.readouterr().err
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0


def test_the_rendered_yaml_parses_back_to_the_crd():
    for crd in crdgen.all_crds().values():
        assert yaml.safe_load(crdgen.render(crd)) == crd


# ---------------------------------------------------------------------------------------------
# names, versions, printer columns


@pytest.mark.parametrize(
    ("file_name", "kind", "plural", "short_name", "scope", "categories"),
    [
        (FINETUNEJOBS, "FineTuneJob", "finetunejobs", "ftj", "Namespaced", ["finetune"]),
        (MODELADAPTERS, "ModelAdapter", "modeladapters", "ftadapter", "Namespaced", ["finetune"]),
        # The catalog is not in `kubectl get finetune`: a tenant who may not read it would get a Forbidden.
        (FINETUNEMODELS, "FineTuneModel", "finetunemodels", "ftmodel", "Cluster", None),
    ],
)
def test_names_short_names_and_category(file_name, kind, plural, short_name, scope, categories):
    crd = crdgen.all_crds()[file_name]
    assert crd["metadata"]["name"] == f"{plural}.finetune.dev"
    assert crd["spec"]["group"] == "finetune.dev"
    assert crd["spec"]["scope"] == scope
    names = crd["spec"]["names"]
    assert names["kind"] == kind
    assert names["plural"] == plural
    assert names["shortNames"] == [short_name]
    assert names.get("categories") == categories


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS])
def test_one_served_storage_version_with_a_status_subresource(file_name):
    version = _version(crdgen.all_crds()[file_name])
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_the_catalog_has_no_status_the_operator_would_write():
    crd = crdgen.all_crds()[FINETUNEMODELS]
    assert "subresources" not in _version(crd)
    assert set(_schema(crd)["properties"]) == {"apiVersion", "kind", "metadata", "spec"}


def _default_columns(file_name: str) -> list[str]:
    columns = _version(crdgen.all_crds()[file_name])["additionalPrinterColumns"]
    return [c["name"] for c in columns if c.get("priority", 0) == 0]


def test_finetunejob_printer_columns():
    assert _default_columns(FINETUNEJOBS) == ["Status", "Queue", "Progress", "Loss", "ETA", "EST", "Adapter", "Age"]


def test_modeladapter_printer_columns():
    assert _default_columns(MODELADAPTERS) == ["Status", "Base", "Rank", "Age"]


def test_finetunemodel_printer_columns():
    assert _default_columns(FINETUNEMODELS) == ["URI", "Revision", "Serving-Name", "Max-GPUs", "Age"]


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_printer_columns_read_fields_of_the_schema_with_the_same_type(file_name):
    crd = crdgen.all_crds()[file_name]
    schema = _schema(crd)
    for column in _version(crd)["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        if path == "metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert _at(schema, path)["type"] == column["type"], column


# ---------------------------------------------------------------------------------------------
# structural schema


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_every_property_under_spec_has_a_description(file_name):
    spec = _schema(crdgen.all_crds()[file_name])["properties"]["spec"]
    undocumented = [path for path, node in _properties(spec, "spec") if not (node.get("description") or "").strip()]
    assert undocumented == []


def test_every_string_under_spec_and_status_has_a_max_length():
    # An enum bounds a string as well as maxLength does.
    unbounded = [
        path
        for path, node in _spec_and_status_nodes()
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node
    ]
    assert unbounded == []


def test_every_array_under_spec_and_status_has_max_items():
    unbounded = [
        path for path, node in _spec_and_status_nodes() if node.get("type") == "array" and "maxItems" not in node
    ]
    assert unbounded == []


def test_every_map_under_spec_has_max_properties():
    unbounded = [
        path
        for path, node in _spec_and_status_nodes()
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node
    ]
    assert unbounded == []


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_every_schema_node_has_a_type_or_preserves_unknown_fields(file_name):
    untyped = [
        path
        for path, node in _walk(_schema(crdgen.all_crds()[file_name]), "")
        if "type" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not node.get("x-kubernetes-int-or-string")
    ]
    assert untyped == []


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_no_json_schema_leftovers_the_api_server_refuses(file_name):
    forbidden = ("$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "nullable", "propertyNames")
    leftovers = [
        (path, key)
        for path, node in _walk(_schema(crdgen.all_crds()[file_name]), "")
        for key in forbidden
        if key in node
    ]
    assert leftovers == []


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_no_additional_properties_false(file_name):
    closed = [
        path
        for path, node in _walk(_schema(crdgen.all_crds()[file_name]), "")
        if node.get("additionalProperties") is False
    ]
    assert closed == []


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_additional_properties_and_properties_are_never_combined(file_name):
    both = [
        path
        for path, node in _walk(_schema(crdgen.all_crds()[file_name]), "")
        if "properties" in node and "additionalProperties" in node
    ]
    assert both == []


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS, FINETUNEMODELS])
def test_every_required_field_is_a_property(file_name):
    for path, node in _walk(_schema(crdgen.all_crds()[file_name]), ""):
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path


def test_exclusive_bounds_are_openapi_3_0_booleans_next_to_their_bound():
    exclusive = [(path, node) for path, node in _spec_and_status_nodes() if "exclusiveMinimum" in node]
    assert exclusive, "weights, learning rates and epochs have exclusive minimums"
    for path, node in exclusive:
        assert node["exclusiveMinimum"] is True, path
        assert isinstance(node["minimum"], int | float), path
    for path, node in _spec_and_status_nodes():
        if "exclusiveMaximum" in node:
            assert node["exclusiveMaximum"] is True, path
            assert isinstance(node["maximum"], int | float), path


def test_a_weight_must_be_strictly_positive():
    weight = _at(_schema(crdgen.finetunejob_crd()), "spec.data.train")["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["exclusiveMinimum"]) == (0.0, True)


def test_free_form_pod_spec_passthroughs_preserve_unknown_fields():
    template = _at(_schema(crdgen.finetunejob_crd()), "spec.template")["properties"]
    assert template["affinity"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": template["affinity"]["description"],
    }
    assert template["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    for source in ("configMap", "secret", "persistentVolumeClaim", "projected"):
        assert template["volumes"]["items"]["properties"][source]["x-kubernetes-preserve-unknown-fields"] is True


def test_volumes_are_typed_so_that_other_volume_types_are_not_stored():
    # Unknown fields are refused by strict field validation (kubectl's default) and pruned otherwise; a volume
    # left without a source is then refused by its exactly-one-source rule.
    volume = _at(_schema(crdgen.finetunejob_crd()), "spec.template")["properties"]["volumes"]["items"]
    assert "x-kubernetes-preserve-unknown-fields" not in volume
    assert "hostPath" not in volume["properties"]
    assert set(volume["properties"]) == {
        "name",
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS])
def test_status_conditions_are_a_list_map_keyed_by_type(file_name):
    conditions = _schema(crdgen.all_crds()[file_name])["properties"]["status"]["properties"]["conditions"]
    assert conditions["type"] == "array"
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert {"type", "status", "reason", "lastTransitionTime"} <= set(item["required"])
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


@pytest.mark.parametrize("file_name", [FINETUNEJOBS, MODELADAPTERS])
def test_status_has_observed_generation(file_name):
    status = _schema(crdgen.all_crds()[file_name])["properties"]["status"]
    assert status["properties"]["observedGeneration"]["type"] == "integer"


def test_model_uris_are_restricted_to_the_supported_schemes():
    pattern = _at(_schema(crdgen.finetunejob_crd()), "spec.model.uri")["pattern"]
    for scheme in ("hf://", "s3://", "pvc://", "file://"):
        assert scheme in pattern


# ---------------------------------------------------------------------------------------------
# defaults


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("spec.method", finetunejob.Method),
        ("spec.training", finetunejob.Training),
        ("spec.training.dpo", finetunejob.DpoSettings),
        ("spec.evaluation", finetunejob.Evaluation),
        ("spec.evaluation.gate", finetunejob.Gate),
        ("spec.resources", finetunejob.Resources),
        ("spec.template", finetunejob.Template),
        ("spec.output", finetunejob.Output),
        ("spec.adapter", finetunejob.AdapterPublishing),
    ],
)
def test_defaulted_sub_objects_have_the_models_default_in_the_schema(path, model):
    node = _at(_schema(crdgen.finetunejob_crd()), path)
    assert "default" in node, f"{path} has no default: the API server would not fill it in"
    assert model.model_validate(node["default"]) == model()


def test_the_resources_default_asks_for_one_gpu_on_one_node():
    default = _at(_schema(crdgen.finetunejob_crd()), "spec.resources")["default"]
    assert default == {"nodes": 1, "gpusPerNode": 1, "gpuResource": "nvidia.com/gpu"}


@pytest.mark.parametrize("path", ["spec.method.lora", "spec.data.eval", "spec.data.general", "spec.model"])
def test_optional_and_required_sub_objects_have_no_default(path):
    # A default for method.lora would break full fine-tuning; eval and general are the user's choice.
    assert "default" not in _at(_schema(crdgen.finetunejob_crd()), path)


def test_scalar_defaults_match_the_models():
    spec = _schema(crdgen.finetunejob_crd())["properties"]["spec"]["properties"]
    assert spec["suspend"]["default"] is False
    assert spec["objective"]["default"] == "sft"
    assert spec["backoffLimit"]["default"] == 3


def test_a_spec_completed_by_the_schema_defaults_equals_the_models_defaults():
    spec = _schema(crdgen.finetunejob_crd())["properties"]["spec"]["properties"]
    defaults = {name: node["default"] for name, node in spec.items() if "default" in node}
    required = {
        "model": {"uri": "hf://org/model"},
        "data": {"train": [{"uri": "s3://bucket/train.jsonl"}], "general": {"uri": "s3://bucket/general.txt"}},
    }
    assert FineTuneJobSpec.model_validate({**defaults, **required}) == FineTuneJobSpec.model_validate(required)


# ---------------------------------------------------------------------------------------------
# CEL rules


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model class inside an annotation and whether it sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        model, in_list = _model_of(arg)
        if model is not None:
            return model, in_list or origin is list
    return None, False


def _rule_placements(model: type[BaseModel], node: dict[str, Any], path: str, in_list: bool) -> Iterator:
    """(path, expected validations, actual validations, under an array) for every model in the schema."""
    expected = [rule.as_validation() for rule in getattr(model, "cel_rules", [])]
    yield path, expected, node.get("x-kubernetes-validations", []), in_list
    for name, field in model.model_fields.items():
        sub_model, is_list = _model_of(field.annotation)
        if sub_model is None:
            continue
        alias = field.alias or name
        sub_node = node["properties"][alias]
        if is_list:
            sub_node = sub_node["items"]
        yield from _rule_placements(sub_model, sub_node, f"{path}.{alias}", in_list or is_list)


PLACEMENTS = [
    placement
    for crd, models in (
        (crdgen.finetunejob_crd(), (FineTuneJobSpec, FineTuneJobStatus)),
        (crdgen.modeladapter_crd(), (ModelAdapterSpec, ModelAdapterStatus)),
        (crdgen.finetunemodel_crd(), (FineTuneModelSpec,)),
    )
    for model, part in zip(models, ("spec", "status")[: len(models)], strict=True)
    for placement in _rule_placements(
        model, _schema(crd)["properties"][part], f"{crd['spec']['names']['kind']}.{part}", False
    )
]


@pytest.mark.parametrize(("path", "expected", "actual", "in_list"), PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_each_models_cel_rules_sit_at_its_schema_node(path, expected, actual, in_list):
    assert actual == expected


def test_every_rule_set_of_the_api_is_attached_somewhere():
    attached = [validation for _, _, actual, _ in PLACEMENTS for validation in actual]
    for rules in (
        finetunejob.MODEL_RULES,
        finetunejob.METHOD_RULES,
        finetunemodel.REQUIREMENT_RULES,
        finetunemodel.SPEC_RULES,
        finetunejob.EVAL_RULES,
        finetunejob.TRAINING_RULES,
        finetunejob.SPEC_RULES,
        finetunejob.SPEC_TRANSITION_RULES,
    ):
        for rule in rules:
            assert rule.as_validation() in attached, rule.message


def test_object_rules_sit_at_the_root_of_the_finetunejob_schema():
    root = _schema(crdgen.finetunejob_crd())
    assert root["x-kubernetes-validations"] == [rule.as_validation() for rule in FineTuneJob.cel_rules]
    assert "x-kubernetes-validations" not in _schema(crdgen.modeladapter_crd())


def test_transition_rules_never_sit_under_an_array():
    # The API server can only correlate old and new values outside lists (or in list-maps).
    for path, _, actual, in_list in PLACEMENTS:
        if in_list:
            assert not any("oldSelf" in v["rule"] for v in actual), path


def test_every_cel_rule_has_a_message_naming_a_field():
    for _, _, actual, _ in PLACEMENTS:
        for validation in actual:
            assert "spec." in validation["message"], validation


def test_the_api_reference_is_generated_from_the_current_models():
    from finetune_operator import apidocs

    assert (REPO / "docs" / "api.md").read_text() == apidocs.render(), "docs/api.md is stale: run `make crds`"
