"""Generate the CustomResourceDefinitions in crds/ from the pydantic models (``make crds``).

pydantic writes JSON Schema (draft 2020-12); the API server wants a structural OpenAPI v3.0
schema. The translation inlines $refs, turns Optional into "may be absent", converts exclusive
bounds to OpenAPI 3.0's boolean form, marks free-form PodSpec passthroughs as
x-kubernetes-preserve-unknown-fields, gives defaulted sub-objects ``default: {}`` so the API
server applies their nested defaults, and attaches each model's CEL rules where the model sits.
"""

from __future__ import annotations

import argparse
import copy
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from finetune_core.api import (
    GROUP,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
    FineTuneModelSpec,
    ModelAdapterSpec,
    ModelAdapterStatus,
    finetunejob,
    finetunemodel,
    modeladapter,
)
from finetune_core.api.base import INT64_MAX
from pydantic import BaseModel

CATEGORY = "finetune"

_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def _models_by_name(*roots: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``roots``, by class name (pydantic names $defs after classes)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in found:
                found[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    for root in roots:
        visit(root)
    return found


class _Translator:
    def __init__(self, schema: dict[str, Any], models: dict[str, type[BaseModel]]):
        self.defs = schema.get("$defs", {})
        self.models = models

    def model_node(self, name: str, node: dict[str, Any]) -> dict[str, Any]:
        out = self.node(node)
        rules = getattr(self.models.get(name), "cel_rules", None)
        if rules:
            out["x-kubernetes-validations"] = [rule.as_validation() for rule in rules]
        return out

    def node(self, node: dict[str, Any]) -> dict[str, Any]:
        node = copy.deepcopy(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            resolved = self.model_node(name, self.defs[name])
            # The field's own description documents this use of the model better than its docstring.
            resolved.update({k: v for k, v in node.items() if k not in ("title",)})
            return resolved
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express a union in a structural schema: {branches}")
            merged = self.node(branches[0])
            if node.get("default", "absent") is None:
                node.pop("default")
            merged.update(self.node(node))
            return merged

        out: dict[str, Any] = {}
        free_form = (
            node.get("type") == "object"
            and "properties" not in node
            and (
                (node.get("additionalProperties") in (True, None) and "additionalProperties" in node)
                or node == {"type": "object"}
            )
        )
        if node == {} or free_form:
            out["type"] = "object"
            out["x-kubernetes-preserve-unknown-fields"] = True
        for key, value in node.items():
            if key in _DROPPED_KEYS:
                continue
            if key == "maximum" and node.get("format") == "int64" and value == INT64_MAX:
                # format: int64 states this bound; the API server reads bounds as float64 and refuses 2**63 - 1.
                continue
            if key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "properties":
                out["properties"] = {name: self.property(name, sub, node) for name, sub in value.items()}
            elif key == "items":
                out["items"] = self.node(value)
            elif key == "const":
                out["enum"] = [value]
            else:
                out[key] = value
        additional = node.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = self.node(additional)
        if out.get("required") == []:
            out.pop("required")
        return out

    def property(self, name: str, sub: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
        out = self.node(sub)
        # A sub-object with a default_factory in the model has no default in pydantic's schema (and,
        # unlike an Optional one, no null branch). Give it the model's own default, spelled out: the
        # API server then fills in the sub-object when it is omitted, and checks the object's CEL
        # rules against that default without applying nested defaults first.
        model = self.models.get(sub.get("$ref", "").rsplit("/", 1)[-1])
        if model is not None and name not in parent.get("required", []) and "default" not in out:
            out["default"] = _without_empty(model().model_dump(by_alias=True, exclude_none=True, mode="json"))
        return out


def _without_empty(value: Any) -> Any:
    """Drop empty lists and maps: defaults that say nothing only clutter the stored objects."""
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    return value


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    translator = _Translator(schema, _models_by_name(model))
    return translator.model_node(model.__name__, schema)


def _object_schema(
    spec: type[BaseModel], status: type[BaseModel] | None, description: str, rules: list
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
        },
    }
    if status is not None:
        schema["properties"]["status"] = structural_schema(status)
    if rules:
        schema["x-kubernetes-validations"] = [rule.as_validation() for rule in rules]
    return schema


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    scope: str = "Namespaced",
    categories: tuple[str, ...] = (CATEGORY,),
) -> dict[str, Any]:
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if "status" in schema["properties"]:
        version["subresources"] = {"status": {}}
    version |= {"additionalPrinterColumns": columns, "schema": {"openAPIV3Schema": schema}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "finetune-operator"}},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                **({"categories": list(categories)} if categories else {}),
            },
            "versions": [version],
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    schema = _object_schema(
        FineTuneJobSpec,
        FineTuneJobStatus,
        finetunejob.FineTuneJob.__doc__ or "",
        finetunejob.OBJECT_RULES,
    )
    columns = [
        {"name": "Status", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the job."},
        {
            "name": "Queue",
            "type": "string",
            "jsonPath": ".status.queue.state",
            "description": "Where Kueue has the job: Queued, Admitted, Inadmissible, Preempted, Evicted or Finished.",
        },
        {
            "name": "Progress",
            "type": "integer",
            "jsonPath": ".status.progress.percent",
            "description": "Percent of the planned optimizer steps done.",
        },
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss", "description": "Training loss."},
        {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "description": "Estimated time left."},
        {
            "name": "EST",
            "type": "string",
            "jsonPath": ".status.plan.estimate.duration",
            "description": "Estimated duration of training, from the preflight's plan.",
        },
        {
            "name": "Adapter",
            "type": "string",
            "jsonPath": ".status.adapter.name",
            "description": "The published ModelAdapter.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
        {"name": "Tokens/s", "type": "number", "jsonPath": ".status.progress.tokensPerSecond", "priority": 1},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri", "priority": 1},
        {"name": "Catalog-Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
        {"name": "ClusterQueue", "type": "string", "jsonPath": ".status.queue.clusterQueue", "priority": 1},
    ]
    return _crd(finetunejob.KIND, finetunejob.PLURAL, ["ftj"], schema, columns)


def modeladapter_crd() -> dict[str, Any]:
    schema = _object_schema(ModelAdapterSpec, ModelAdapterStatus, modeladapter.ModelAdapter.__doc__ or "", [])
    columns = [
        {"name": "Status", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the adapter."},
        {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.uri", "description": "The base model."},
        {"name": "Rank", "type": "integer", "jsonPath": ".spec.lora.rank", "description": "LoRA rank."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Max-LoRA-Rank", "type": "integer", "jsonPath": ".status.requiredMaxLoraRank", "priority": 1},
        {"name": "Artifact", "type": "string", "jsonPath": ".spec.artifact.uri", "priority": 1},
    ]
    return _crd(modeladapter.KIND, modeladapter.PLURAL, ["ftadapter"], schema, columns)


def finetunemodel_crd() -> dict[str, Any]:
    # No status: the catalog is the admin's statement; what a job made of it is said on the job (ModelResolved).
    schema = _object_schema(FineTuneModelSpec, None, finetunemodel.FineTuneModel.__doc__ or "", [])
    columns = [
        {"name": "URI", "type": "string", "jsonPath": ".spec.uri", "description": "Where the base model is."},
        {"name": "Revision", "type": "string", "jsonPath": ".spec.revision", "description": "Its revision."},
        {
            "name": "Serving-Name",
            "type": "string",
            "jsonPath": ".spec.servingName",
            "description": "The base model's name in serving stacks.",
        },
        {
            "name": "Max-GPUs",
            "type": "integer",
            "jsonPath": ".spec.limits.maxGPUs",
            "description": "Most GPUs of one job.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Max-Nodes", "type": "integer", "jsonPath": ".spec.limits.maxNodes", "priority": 1},
    ]
    # Not in the finetune category: `kubectl get finetune` is a tenant's view of their jobs and adapters, and a
    # tenant who may not read the catalog (rbac.catalogReaders) would have it fail with a Forbidden.
    return _crd(finetunemodel.KIND, finetunemodel.PLURAL, ["ftmodel"], schema, columns, scope="Cluster", categories=())


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, as written to crds/."""
    return {
        f"{GROUP}_{finetunejob.PLURAL}.yaml": finetunejob_crd(),
        f"{GROUP}_{modeladapter.PLURAL}.yaml": modeladapter_crd(),
        f"{GROUP}_{finetunemodel.PLURAL}.yaml": finetunemodel_crd(),
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)

HEADER = "# Generated by `make crds` from core/finetune_core/api; do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, action="append", default=None, help="directory to write into (repeatable; default: crds/)"
    )
    parser.add_argument("--check", action="store_true", help="fail if a file differs instead of writing it")
    args = parser.parse_args(argv)
    stale = []
    for out in args.out or [Path("crds")]:
        out.mkdir(parents=True, exist_ok=True)
        for name, crd in all_crds().items():
            path = out / name
            text = render(crd)
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                path.write_text(text)
    if stale:
        print("stale CRDs (run `make crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
