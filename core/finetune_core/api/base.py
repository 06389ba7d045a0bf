"""Building blocks shared by every API model: camelCase aliases, strictness and common types.

The CRD schemas in ``crds/`` are generated from these models (``make crds``), so a constraint
written here is enforced twice: by pydantic in the operator and trainer, and by the API server.
Every string has a maximum length and every list a maximum size because the API server's CEL
cost estimator refuses rules over unbounded values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StringConstraints
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .paths import UNSAFE_URI_PATH_CEL_PATTERN, URI_PATH_MESSAGE, checked_uri
from .quantity import positive_quantity

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """A Kubernetes-style object part: camelCase in YAML, snake_case in Python, unknown fields refused,
    numbers finite."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        # JSON has no NaN or infinity: such a number from a report could never be written to a status, so
        # it is refused where it comes in, with the field named, at any depth of the model.
        allow_inf_nan=False,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server would hold it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


INT64_MAX = 2**63 - 1

# An integer the API server can store. A larger one passes JSON and Python and then fails when the
# status is written (after the report was accepted): refused where it comes in instead.
Int64 = Annotated[int, Field(le=INT64_MAX, json_schema_extra={"format": "int64"})]


def text(max_length: int, pattern: str | None = None, min_length: int = 0) -> Any:
    return Annotated[str, StringConstraints(max_length=max_length, min_length=min_length, pattern=pattern)]


@dataclass(frozen=True)
class CelOnValue:
    """A CEL rule on the value of a type, wherever the type is used: the API server reports it under the
    field's own path (spec.data.train[0].uri: ...), so the message says what is wrong, not where."""

    rule: str
    message: str

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("x-kubernetes-validations", []).append({"rule": self.rule, "message": self.message})
        return json_schema


# RFC 1123 subdomain: names of Secrets, ServiceAccounts, ConfigMaps, PriorityClasses...
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = text(253, DNS_SUBDOMAIN_PATTERN, min_length=1)
# RFC 1123 label: names that become part of other names (Services, Jobs, DNS names of pods).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LabelName = text(63, DNS_LABEL_PATTERN, min_length=1)

# A Kubernetes resource quantity ("32", "256Gi", "500m", "1e3"), kept as text like the API does and
# parsed by api/quantity.py wherever its value matters. The exponent is an integer, as apimachinery's.
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
# Requests and limits: above zero, and no larger than the API server represents (it would cap them).
PositiveQuantity = Annotated[
    text(64, QUANTITY_PATTERN, min_length=1),
    AfterValidator(positive_quantity),
    CelOnValue(
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) "
        "&& quantity(self).compareTo(quantity('9223372036854775807')) <= 0",
        "must be a quantity greater than zero (for example 500m, 4, 16Gi)",
    ),
]

# Where models, data and outputs live. file:// is for local runs of the trainer and the test node.
MODEL_URI_PATTERN = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.*)$"
DATA_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.*|hf://datasets/.+)$"
STORAGE_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.*)$"
)
# Keys and claim paths stay below their bucket or claim: refused here, and again where the trainer
# joins them onto a local directory.
_SAFE_URI_PATH = (
    AfterValidator(checked_uri),
    CelOnValue(f"!self.matches('{UNSAFE_URI_PATH_CEL_PATTERN}')", URI_PATH_MESSAGE),
)
ModelUri = Annotated[text(1024, MODEL_URI_PATTERN, min_length=1), *_SAFE_URI_PATH]
DataUri = Annotated[text(1024, DATA_URI_PATTERN, min_length=1), *_SAFE_URI_PATH]
StorageUri = Annotated[text(1024, STORAGE_URI_PATTERN, min_length=1), *_SAFE_URI_PATH]

Timestamp = text(64)  # RFC 3339, as the API server writes metav1.Time


def describe(description: str, **kwargs: Any) -> Any:
    """A Field with documentation: every field of the API carries one (``kubectl explain`` shows it)."""
    return Field(description=description, **kwargs)


def cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    """One x-kubernetes-validations entry: a CEL rule the API server checks, with a message naming the field."""
    return {"rule": rule, "message": message, **extra}


class SecretReference(ApiModel):
    """A Secret in the same namespace."""

    name: ObjectName = describe("Name of a Secret in the same namespace as this object.")


class LocalObjectReference(ApiModel):
    name: ObjectName = describe("Name of the object in the same namespace.")


# Conditions are a list-map keyed by type: server-side apply merges them per type.
CONDITIONS_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class Condition(ApiModel):
    """A metav1.Condition: the latest observation of one aspect of the object's state."""

    type: text(
        316,
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        1,
    ) = describe("Type of condition in CamelCase, for example Succeeded.")
    status: Literal["True", "False", "Unknown"] = describe("Status of the condition: True, False or Unknown.")
    reason: text(1024, r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", 1) = describe(
        "Programmatic identifier in CamelCase for the reason of the last transition."
    )
    message: text(32768) = describe("Human-readable details of the last transition.", default="")
    last_transition_time: Timestamp = describe(
        "When the condition last changed status (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: Int64 | None = describe(
        "The metadata.generation the condition was set for.", default=None, ge=0
    )


def format_validation_error(exc: Exception) -> list[str]:
    """One line per problem of a pydantic ValidationError, each starting with the field's path as the API
    server writes it (spec.data.train[0].weight)."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return [str(exc)]
    lines = []
    for error in errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines
