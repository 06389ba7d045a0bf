"""FineTuneModel: one base model of the cluster's catalog, with its defaults and limits.

A platform admin says once which base models tenants may fine-tune, where each one is, which Secret
reads it, what a job gets when it does not say, and what it may not exceed. A FineTuneJob names an
entry (spec.model.name) instead of a uri; the operator resolves it (catalog.py) and refuses a job over
a limit with a condition naming the limit. Cluster-scoped: the catalog is the admin's, tenants read it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    ApiModel,
    LabelName,
    ModelUri,
    ObjectName,
    PositiveQuantity,
    describe,
    text,
)
from .finetunejob import LoraSettings, Method, MethodType, ObjectMeta, Resources, Training
from .rules import Rule, check

KIND = "FineTuneModel"
PLURAL = "finetunemodels"

# metav1.LabelSelector: label keys are an optional DNS-subdomain prefix and a name of at most 63 characters.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelKey = text(317, LABEL_KEY_PATTERN, min_length=1)
LabelValue = text(63, LABEL_VALUE_PATTERN)

REQUIREMENT_RULES = [
    Rule(
        cel="(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)",
        message="spec.limits.namespaceSelector.matchExpressions: values are required with In and NotIn and not "
        "allowed with Exists and DoesNotExist",
        holds=lambda r: (r.operator in ("In", "NotIn")) == bool(r.values),
    )
]


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as metav1.LabelSelectorRequirement."""

    cel_rules: ClassVar[list[Rule]] = REQUIREMENT_RULES

    key: LabelKey = describe("The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = describe("In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] = describe(
        "Values for In and NotIn (at least one); empty for Exists and DoesNotExist.",
        default_factory=list,
        max_length=64,
    )

    @model_validator(mode="after")
    def _rules(self) -> LabelSelectorRequirement:
        return check(REQUIREMENT_RULES, self)


class LabelSelector(ApiModel):
    """A metav1.LabelSelector: every matchLabels pair and every matchExpressions requirement must hold."""

    # Keys are not checked here (a CRD schema cannot constrain map keys): a key no label can have matches nothing.
    match_labels: dict[str, LabelValue] = describe(
        "Labels the namespace must carry with these values.", default_factory=dict, max_length=32
    )
    match_expressions: list[LabelSelectorRequirement] = describe(
        "Requirements on the namespace's labels.", default_factory=list, max_length=32
    )


class JobSecretReference(ApiModel):
    """A Secret in the namespace of the job that uses the model (a FineTuneModel has no namespace of its own)."""

    name: ObjectName = describe("Name of a Secret in the namespace of each job that names this model.")


class ResourceDefaults(ApiModel):
    """Compute a job gets for what it leaves at the built-in defaults (see FineTuneJob spec.resources)."""

    nodes: int | None = describe("Pods (one per node).", default=None, ge=1, le=256)
    gpus_per_node: int | None = describe("GPUs per pod.", default=None, ge=0, le=16)
    gpu_resource: text(253, r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", 1) | None = (
        describe("Extended resource name of the GPUs, for example nvidia.com/gpu.", default=None)
    )
    cpu: PositiveQuantity | None = describe("CPU request and limit per pod.", default=None)
    memory: PositiveQuantity | None = describe("Memory request and limit per pod.", default=None)
    shared_memory: PositiveQuantity | None = describe("Size of /dev/shm per pod.", default=None)


class ModelDefaults(ApiModel):
    """What a job naming this model gets where it keeps the built-in default.

    A job field still at its built-in default (method lora without lora settings, maxSeqLength 2048, one
    node, one GPU, no cpu or memory) takes the value given here; a job that sets a field to anything else
    keeps its own value (within the limits)."""

    method: Method | None = describe(
        "The method, with its LoRA settings (rank, alpha, target modules), for jobs whose spec.method is the "
        "built-in default (type lora without lora settings).",
        default=None,
    )
    max_seq_length: int | None = describe(
        "spec.training.maxSeqLength for jobs that leave it at 2048.", default=None, ge=16, le=262144
    )
    resources: ResourceDefaults | None = describe("spec.resources fields for jobs that leave them unset.", default=None)


class ModelLimits(ApiModel):
    """What a job naming this model may not exceed, checked after the defaults are applied. Unset: no limit."""

    max_gpus: int | None = describe(
        "Most GPUs of one job: spec.resources.nodes times gpusPerNode.", default=None, ge=0, le=4096, alias="maxGPUs"
    )
    max_nodes: int | None = describe("Most pods (nodes) of one job: spec.resources.nodes.", default=None, ge=1, le=256)
    max_epochs: float | None = describe(
        "Most passes over the data: spec.training.epochs (1 when unset). A job that sets maxSteps instead is "
        "bounded by maxSteps.",
        default=None,
        gt=0.0,
        le=100.0,
    )
    max_steps: int | None = describe("Most optimizer steps: spec.training.maxSteps.", default=None, ge=1, le=10_000_000)
    max_seq_length: int | None = describe(
        "Longest sequence: spec.training.maxSeqLength.", default=None, ge=16, le=262144
    )
    max_lora_rank: int | None = describe(
        "Highest LoRA rank (what the serving stack's --max-lora-rank loads): spec.method.lora.rank.",
        default=None,
        ge=1,
        le=512,
    )
    allowed_methods: list[MethodType] = describe(
        "Methods a job may use (lora, qlora, full). Empty: all.", default_factory=list, max_length=3
    )
    namespaces: list[LabelName] = describe(
        "Namespaces whose jobs may use this model. With namespaceSelector too, a namespace in either may. "
        "Neither set: every namespace.",
        default_factory=list,
        max_length=256,
    )
    namespace_selector: LabelSelector | None = describe(
        "Namespaces, by their labels, whose jobs may use this model (an empty selector matches every namespace).",
        default=None,
    )


# What a job gets where neither it nor the model says: the API's own defaults.
BUILT_IN_METHOD = Method()
BUILT_IN_RANK = LoraSettings().rank
BUILT_IN_SEQ_LENGTH = Training().max_seq_length
BUILT_IN_NODES = Resources().nodes
BUILT_IN_GPUS_PER_NODE = Resources().gpus_per_node


def _default(spec: FineTuneModelSpec, field: str, built_in):
    resources = spec.defaults.resources
    value = getattr(resources, field) if resources is not None else None
    return built_in if value is None else value


def _default_method(spec: FineTuneModelSpec) -> Method:
    return spec.defaults.method or BUILT_IN_METHOD


def _default_rank(spec: FineTuneModelSpec) -> int | None:
    method = _default_method(spec)
    return None if method.type == "full" else (method.lora.rank if method.lora else BUILT_IN_RANK)


_NODES = f"(has(self.defaults.resources) && has(self.defaults.resources.nodes) ? self.defaults.resources.nodes : {BUILT_IN_NODES})"
_GPUS_PER_NODE = (
    "(has(self.defaults.resources) && has(self.defaults.resources.gpusPerNode) "
    f"? self.defaults.resources.gpusPerNode : {BUILT_IN_GPUS_PER_NODE})"
)
_METHOD_TYPE = f"(has(self.defaults.method) ? self.defaults.method.type : '{BUILT_IN_METHOD.type}')"
_RANK = (
    f"(has(self.defaults.method) && has(self.defaults.method.lora) ? self.defaults.method.lora.rank : {BUILT_IN_RANK})"
)
_SEQ_LENGTH = f"(has(self.defaults.maxSeqLength) ? self.defaults.maxSeqLength : {BUILT_IN_SEQ_LENGTH})"
_FIT = "a job that keeps every default must fit the limits (the built-in defaults count where the model gives none)"

# A job that names the model and says nothing else is never refused over a limit: defaults (the built-in
# ones where the model gives none) over a limit are refused when the admin writes them.
SPEC_RULES = [
    Rule(
        cel=f"!has(self.limits.maxNodes) || {_NODES} <= self.limits.maxNodes",
        message=f"spec.defaults.resources.nodes exceeds spec.limits.maxNodes: {_FIT}",
        holds=lambda s: s.limits.max_nodes is None or _default(s, "nodes", BUILT_IN_NODES) <= s.limits.max_nodes,
    ),
    Rule(
        cel=f"!has(self.limits.maxGPUs) || {_NODES} * {_GPUS_PER_NODE} <= self.limits.maxGPUs",
        message=f"spec.defaults.resources (nodes times gpusPerNode) exceeds spec.limits.maxGPUs: {_FIT}",
        holds=lambda s: (
            s.limits.max_gpus is None
            or _default(s, "nodes", BUILT_IN_NODES) * _default(s, "gpus_per_node", BUILT_IN_GPUS_PER_NODE)
            <= s.limits.max_gpus
        ),
    ),
    Rule(
        cel=f"!has(self.limits.maxSeqLength) || {_SEQ_LENGTH} <= self.limits.maxSeqLength",
        message=f"spec.defaults.maxSeqLength exceeds spec.limits.maxSeqLength: {_FIT}",
        holds=lambda s: (
            s.limits.max_seq_length is None
            or (s.defaults.max_seq_length or BUILT_IN_SEQ_LENGTH) <= s.limits.max_seq_length
        ),
    ),
    Rule(
        cel=f"!has(self.limits.allowedMethods) || size(self.limits.allowedMethods) == 0 "
        f"|| {_METHOD_TYPE} in self.limits.allowedMethods",
        message=f"spec.defaults.method.type is not in spec.limits.allowedMethods: {_FIT}",
        holds=lambda s: not s.limits.allowed_methods or _default_method(s).type in s.limits.allowed_methods,
    ),
    Rule(
        cel=f"!has(self.limits.maxLoraRank) || {_METHOD_TYPE} == 'full' || {_RANK} <= self.limits.maxLoraRank",
        message=f"spec.defaults.method.lora.rank exceeds spec.limits.maxLoraRank: {_FIT}",
        holds=lambda s: s.limits.max_lora_rank is None or (_default_rank(s) or 0) <= s.limits.max_lora_rank,
    ),
]


class FineTuneModelSpec(ApiModel):
    """Where the base model is, how it is served, and what jobs that name it get and may do."""

    cel_rules: ClassVar[list[Rule]] = SPEC_RULES

    uri: ModelUri = describe(
        "Where the base model is: hf://org/name, s3://bucket/prefix/, pvc://claim/path (a claim of that name in "
        "the job's namespace) or file:///abs/path. The directory holds config.json, the weights in safetensors "
        "and the tokenizer files."
    )
    revision: text(255) | None = describe(
        "Branch, tag or commit of an hf:// model; a commit pins every job to the same base. Default: main.",
        default=None,
    )
    credentials_secret_ref: JobSecretReference | None = describe(
        "Secret that reads the model (HF_TOKEN for hf://; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
        "optionally AWS_ENDPOINT_URL and AWS_REGION for s3://). Resolved in the namespace of each job that "
        "names this model: a job of namespace team-a reads the Secret of this name in team-a, and waits "
        "(SecretNotFound) until it exists there. Never a Secret of the operator's namespace: the operator's "
        "own credentials are not lent to tenants.",
        default=None,
    )
    serving_name: text(253) | None = describe(
        "The base model's name in serving stacks (vLLM --served-model-name); published ModelAdapters carry it "
        "as spec.baseModel.servedName. Default: the last path segment of uri, lower-cased.",
        default=None,
    )
    chat_template_notes: text(4096) | None = describe(
        "For people: which chat template the tokenizer brings (or that jobs must give in spec.data.chatTemplate) "
        "and what it supports (system prompts, tools).",
        default=None,
    )
    defaults: ModelDefaults = describe(
        "What jobs get where they keep the built-in defaults.", default_factory=ModelDefaults
    )
    limits: ModelLimits = describe(
        "What jobs may not exceed, and which namespaces may use the model.", default_factory=ModelLimits
    )

    @model_validator(mode="after")
    def _rules(self) -> FineTuneModelSpec:
        return check(SPEC_RULES, self)


class FineTuneModel(ApiModel):
    """A base model of the cluster's catalog: where it is, its defaults and limits, and who may fine-tune it."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(default="finetune.dev/v1alpha1", alias="apiVersion")
    kind: Literal["FineTuneModel"] = "FineTuneModel"
    metadata: ObjectMeta
    spec: FineTuneModelSpec
