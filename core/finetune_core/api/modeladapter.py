"""ModelAdapter: a trained adapter (or full model) that serving stacks can load.

The kind's name equals vLLM AIBrix's ModelAdapter (group model.aibrix.ai), so it claims no short
name that collides; docs use the full resource name modeladapters.finetune.dev.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    CONDITIONS_LIST_MAP,
    ApiModel,
    Condition,
    Int64,
    ModelUri,
    SecretReference,
    StorageUri,
    describe,
    text,
)
from .finetunejob import EvaluationSummary, ObjectMeta
from .rules import Rule, check, immutable

KIND = "ModelAdapter"
PLURAL = "modeladapters"

AdapterFormat = Literal["peft-lora", "full-model"]
AdapterPhase = Literal["Pending", "Verifying", "Ready", "Failed"]

# The --max-lora-rank values vLLM accepts; an adapter needs the smallest one at or above its rank.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class BaseModelRef(ApiModel):
    """The base model the adapter was trained on."""

    uri: ModelUri = describe("Where the base model is (hf://, s3://, pvc:// or file://).")
    revision: text(255) | None = describe("Exact revision (commit) of the base model.", default=None)
    served_name: text(253) | None = describe(
        "The base model's name in serving stacks (vLLM --served-model-name).", default=None
    )


class AdapterLora(ApiModel):
    """Shape of a LoRA adapter, as serving stacks need it to reserve memory."""

    rank: int = describe("LoRA rank r.", ge=1, le=4096)
    alpha: int | None = describe("LoRA alpha.", default=None, ge=1)
    target_modules: list[text(128)] = describe(
        "Modules carrying adapters, resolved to names (never all-linear).", default_factory=list, max_length=256
    )


class Artifact(ApiModel):
    """The stored files: immutable, versioned, content-addressed by digest."""

    uri: StorageUri = describe(
        "Directory of the artifact: s3://bucket/prefix/<namespace>/<adapter>/<version>/ or pvc://."
    )
    digest: text(71, r"^sha256:[a-f0-9]{64}$") | None = describe(
        "sha256 over the artifact's files in a fixed order (the manifest.json's digest). Verified before the "
        "adapter is Ready; when omitted on an import, the operator computes it into status.digest.",
        default=None,
    )
    credentials_secret_ref: SecretReference | None = describe(
        "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL and "
        "AWS_REGION to read an s3:// artifact (required: the operator never reads storage with its own identity). "
        "AWS_ENDPOINT_URL must be an endpoint the platform admin allows; without it, AWS's own S3.",
        default=None,
    )


class SourceJob(ApiModel):
    """The FineTuneJob that produced the adapter."""

    fine_tune_job: text(253) = describe("Name of the FineTuneJob in this namespace.")
    uid: text(64) | None = describe(
        "UID of that FineTuneJob (names survive deletion; UIDs do not repeat).", default=None
    )


ADAPTER_RULES = [
    Rule(
        cel="self.format != 'full-model' || !has(self.lora)",
        message="spec.lora describes LoRA adapters only: remove it when spec.format is full-model",
        holds=lambda s: s.format != "full-model" or s.lora is None,
    ),
]
ADAPTER_TRANSITION_RULES = [
    immutable("artifact", "spec.artifact", "publish another version as a new ModelAdapter"),
]


class ModelAdapterSpec(ApiModel):
    """What the adapter is, where it is stored and where it came from."""

    cel_rules: ClassVar[list[Rule]] = ADAPTER_RULES + ADAPTER_TRANSITION_RULES

    base_model: BaseModelRef = describe("The base model the adapter applies to.")
    format: AdapterFormat = describe(
        "peft-lora: a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors). "
        "full-model: a complete model in safetensors.",
        default="peft-lora",
    )
    lora: AdapterLora | None = describe(
        "Rank, alpha and target modules of a peft-lora adapter. Read from adapter_config.json when omitted.",
        default=None,
    )
    artifact: Artifact = describe("The stored files.")
    source: SourceJob | None = describe("The FineTuneJob that trained it (absent for imports).", default=None)
    evaluation: EvaluationSummary | None = describe("The evaluation that let it be published.", default=None)

    @model_validator(mode="after")
    def _rules(self) -> ModelAdapterSpec:
        return check(ADAPTER_RULES, self)


class ModelAdapterStatus(ApiModel):
    """What the operator verified."""

    phase: AdapterPhase | None = describe("Pending, Verifying, Ready or Failed (for display).", default=None)
    observed_generation: Int64 | None = describe("The metadata.generation this status describes.", default=None, ge=0)
    conditions: list[Condition] = describe(
        "ArtifactVerified, ServingCompatible and Ready.",
        default_factory=list,
        max_length=8,
        json_schema_extra=CONDITIONS_LIST_MAP,
    )
    digest: text(71) | None = describe("The digest the operator computed over the artifact's files.", default=None)
    size_bytes: Int64 | None = describe("Total size of the artifact's files.", default=None, ge=0)
    required_max_lora_rank: int | None = describe(
        "The smallest vLLM --max-lora-rank that can load the adapter.", default=None, ge=1
    )
    target_modules: list[text(128)] = describe(
        "Target modules read from adapter_config.json.", default_factory=list, max_length=256
    )
    verified_at: text(64) | None = describe("When the artifact was last verified.", default=None)


class ModelAdapter(ApiModel):
    """A fine-tuned adapter (or full model), stored immutably and verified loadable by serving stacks."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(default="finetune.dev/v1alpha1", alias="apiVersion")
    kind: Literal["ModelAdapter"] = "ModelAdapter"
    metadata: ObjectMeta
    spec: ModelAdapterSpec
    status: ModelAdapterStatus = Field(default_factory=ModelAdapterStatus)


def required_max_lora_rank(rank: int) -> int | None:
    """The smallest vLLM --max-lora-rank value that fits ``rank``; None if vLLM cannot serve it."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)
