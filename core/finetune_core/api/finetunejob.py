"""FineTuneJob: what a user asks for (spec) and what the operator observed (status)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    CONDITIONS_LIST_MAP,
    ApiModel,
    Condition,
    DataUri,
    Int64,
    LabelName,
    LocalObjectReference,
    ModelUri,
    ObjectName,
    PositiveQuantity,
    SecretReference,
    StorageUri,
    Timestamp,
    describe,
    text,
)
from .paths import is_within, normalised_mount_path
from .plan import Plan
from .rules import Rule, check, immutable

KIND = "FineTuneJob"
PLURAL = "finetunejobs"

# The longest name whose children still fit: "<name>-trainer" and the pods' "<name>-<index>-<suffix>"
# must stay DNS labels (63 characters).
MAX_NAME_LENGTH = 52

MethodType = Literal["lora", "qlora", "full"]
Objective = Literal["sft", "pretrain", "dpo"]
DataFormat = Literal["auto", "messages", "prompt-completion", "alpaca", "sharegpt", "text", "preference"]
SourceFormat = Literal["messages", "prompt-completion", "alpaca", "sharegpt", "text", "preference"]
Phase = Literal["Pending", "Suspended", "Running", "Succeeded", "Failed"]
GateMode = Literal["enforce", "warn", "off"]
GateResult = Literal["Passed", "Failed", "Warned", "Skipped"]

SFT_FORMATS = ("messages", "prompt-completion", "alpaca", "sharegpt")

# ---------------------------------------------------------------------------------------------
# spec.model


MODEL_RULES = [
    Rule(
        cel="has(self.name) != has(self.uri)",
        message="spec.model needs exactly one of name (a FineTuneModel of the catalog) or uri",
        holds=lambda m: (m.name is None) != (m.uri is None),
    ),
    Rule(
        cel="!has(self.name) || (!has(self.revision) && !has(self.credentialsSecretRef) && !has(self.servedName))",
        message="spec.model.name takes the revision, credentials and served name from the FineTuneModel: remove "
        "spec.model.revision, credentialsSecretRef and servedName, or give spec.model.uri instead of name",
        holds=lambda m: m.name is None or (m.revision, m.credentials_secret_ref, m.served_name) == (None, None, None),
    ),
]


class ModelSource(ApiModel):
    """The base model to fine-tune: a FineTuneModel of the catalog by name, or a uri."""

    cel_rules: ClassVar[list[Rule]] = MODEL_RULES

    name: ObjectName | None = describe(
        "Name of a FineTuneModel (the cluster's model catalog) instead of a uri: the operator takes the model's "
        "uri, revision, credentials and serving name from it, applies its defaults to what this job leaves at the "
        "built-in defaults, and refuses the job (condition ModelResolved) when it exceeds the model's limits or "
        "this namespace may not use it.",
        default=None,
    )
    uri: ModelUri | None = describe(
        "Where the base model is: hf://org/name (Hugging Face Hub or the mirror in HF_ENDPOINT), "
        "s3://bucket/prefix/ (any S3-compatible store), pvc://claim/path (a PersistentVolumeClaim in "
        "this namespace) or file:///abs/path (local runs). The directory holds config.json, the "
        "weights in safetensors and the tokenizer files.",
        default=None,
    )
    revision: text(255) | None = describe(
        "Branch, tag or commit of an hf:// model. The trainer resolves it to a commit and reports it in "
        "status.model.revision, so a published adapter always names the exact base. Default: main.",
        default=None,
    )
    credentials_secret_ref: SecretReference | None = describe(
        "Secret with the credentials to read the model: HF_TOKEN for hf://, or AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, and optionally AWS_ENDPOINT_URL and AWS_REGION for s3://. The Secret is "
        "mounted into the trainer as files; its values are never copied anywhere else.",
        default=None,
    )
    served_name: text(253) | None = describe(
        "The base model's name in serving stacks (vLLM --served-model-name). Copied to the published "
        "ModelAdapter so a serving stack can match the adapter to its base. Default: the last path "
        "segment of uri, lower-cased.",
        default=None,
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelSource:
        return check(MODEL_RULES, self)


# ---------------------------------------------------------------------------------------------
# spec.method


class LoraSettings(ApiModel):
    """Low-rank adapter settings (LoRA, and the adapter of QLoRA)."""

    rank: int = describe("Rank r of the low-rank update matrices.", default=16, ge=1, le=512)
    alpha: int = describe(
        "Scaling numerator: the update is scaled by alpha/rank (alpha/sqrt(rank) with rslora).",
        default=32,
        ge=1,
        le=4096,
    )
    dropout: float = describe("Dropout on the adapter's input during training.", default=0.05, ge=0.0, lt=1.0)
    target_modules: list[text(128, r"^[A-Za-z0-9_.*-]+$", 1)] = describe(
        "Names of the linear modules that get adapters, for example q_proj and v_proj, or the single "
        "value all-linear for every linear layer except the output head (best quality for the cost).",
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
    )
    rslora: bool = describe(
        "Rank-stabilised LoRA: scale by alpha/sqrt(rank) instead of alpha/rank, which keeps high ranks stable.",
        default=False,
    )


METHOD_RULES = [
    Rule(
        cel="self.type != 'qlora' || has(self.lora)",
        message="spec.method.lora is required when spec.method.type is qlora: set at least its rank",
        holds=lambda m: m.type != "qlora" or m.lora is not None,
    ),
    Rule(
        cel="self.type != 'full' || !has(self.lora)",
        message="spec.method.lora applies to lora and qlora only: remove it when spec.method.type is full",
        holds=lambda m: m.type != "full" or m.lora is None,
    ),
]


class Method(ApiModel):
    """How the weights are trained."""

    cel_rules: ClassVar[list[Rule]] = METHOD_RULES

    type: MethodType = describe(
        "lora: train low-rank adapters on the frozen base (the default: cheap, and forgets least). "
        "qlora: the same on a 4-bit NF4 quantised base (needs NVIDIA GPUs). "
        "full: train every weight (most capacity, most memory; FSDP across GPUs when needed).",
        default="lora",
    )
    lora: LoraSettings | None = describe(
        "Adapter settings for lora and qlora. Default for lora: rank 16, alpha 32, all-linear.", default=None
    )

    @model_validator(mode="after")
    def _rules(self) -> Method:
        return check(METHOD_RULES, self)


# ---------------------------------------------------------------------------------------------
# spec.data


class DataSource(ApiModel):
    """One training data source; several are mixed by weight."""

    uri: DataUri = describe(
        "A file or a directory of files (JSONL, JSON, Parquet, CSV or text) at s3://, pvc:// or file:// "
        "(or hf://datasets/org/name)."
    )
    format: SourceFormat | None = describe(
        "Format of this source's rows when it differs from spec.data.format, for example text for "
        "general-data replay mixed into chat data.",
        default=None,
    )
    weight: float = describe(
        "Relative share of this source in the training mix (normalised over all sources). No source is "
        "repeated: an epoch ends when the first source is used up, and larger sources are subsampled (other "
        "rows each epoch). Mixing in general data with a small weight (replay) protects against catastrophic "
        "forgetting.",
        default=1.0,
        gt=0.0,
        le=1000.0,
    )


EVAL_RULES = [
    Rule(
        cel="has(self.uri) != has(self.splitFraction)",
        message="spec.data.eval needs exactly one of uri (an eval set) or splitFraction (held out from train)",
        holds=lambda e: (e.uri is None) != (e.split_fraction is None),
    )
]


class EvalData(ApiModel):
    """Held-out task data: an eval set, or a fraction split off the training data."""

    cel_rules: ClassVar[list[Rule]] = EVAL_RULES

    uri: DataUri | None = describe("An eval set in the same format as the training data.", default=None)
    split_fraction: float | None = describe(
        "Fraction of the training rows held out for evaluation (deterministic, by seed).",
        default=None,
        gt=0.0,
        le=0.5,
    )

    @model_validator(mode="after")
    def _rules(self) -> EvalData:
        return check(EVAL_RULES, self)


class GeneralData(ApiModel):
    """Broad-domain data used only for evaluation: the forgetting check of the gate."""

    uri: DataUri = describe("General text (or chat) the base model handles well; never trained on.")
    format: SourceFormat = describe("Format of the general data's rows.", default="text")


class Data(ApiModel):
    """Training, evaluation and general data."""

    format: DataFormat = describe(
        "Format of the training rows. auto detects it per source from the first rows: messages "
        "(OpenAI fine-tuning JSONL: tools, tool calls and tool results rendered through the chat template; "
        "assistant messages with weight 0 are not learned), prompt-completion, alpaca (instruction/input/output), sharegpt "
        "(conversations from/value), text (raw text for continued pre-training) or preference "
        "(prompt/chosen/rejected for DPO).",
        default="auto",
    )
    train: list[DataSource] = describe("Training sources, mixed by weight.", min_length=1, max_length=16)
    eval: EvalData | None = describe(
        "Held-out task data for evaluation and the gate. Default: splitFraction 0.05.", default=None
    )
    general: GeneralData | None = describe(
        "General data for the forgetting check: the gate compares base and adapted model on it. "
        "Required while spec.evaluation.gate.mode is enforce.",
        default=None,
    )
    max_invalid_fraction: float = describe(
        "Largest fraction of rows that may be invalid (malformed JSON, missing or mistyped fields). "
        "Invalid rows are skipped and reported with file:line; above this fraction the job fails with a "
        "data error instead of training on broken data.",
        default=0.01,
        ge=0.0,
        le=1.0,
    )
    overlong_rows: Literal["truncate", "drop"] = describe(
        "What to do with rows longer than spec.training.maxSeqLength: truncate them (the default) or drop "
        "them. Both are counted in the training report.",
        default="truncate",
    )
    chat_template: text(65536) | None = describe(
        "A Jinja chat template to use instead of the tokenizer's own (required for chat formats when the "
        "tokenizer has none).",
        default=None,
    )
    credentials_secret_ref: SecretReference | None = describe(
        "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL and "
        "AWS_REGION to read s3:// data (or HF_TOKEN for hf://datasets).",
        default=None,
    )


# ---------------------------------------------------------------------------------------------
# spec.training


class DpoSettings(ApiModel):
    """Direct Preference Optimisation."""

    beta: float = describe(
        "Strength of the pull towards the reference model (higher: stay closer to the base).",
        default=0.1,
        gt=0.0,
        le=10.0,
    )


TRAINING_RULES = [
    Rule(
        cel="!(has(self.epochs) && has(self.maxSteps))",
        message="spec.training sets both epochs and maxSteps: choose one",
        holds=lambda t: t.epochs is None or t.max_steps is None,
    )
]


class Training(ApiModel):
    """Optimisation settings. The defaults are conservative: they change the model as little as the task allows."""

    cel_rules: ClassVar[list[Rule]] = TRAINING_RULES

    epochs: float | None = describe(
        "Passes over the training mix. Default: 1 when maxSteps is not set.", default=None, gt=0.0, le=100.0
    )
    max_steps: int | None = describe("Optimizer steps to run instead of epochs.", default=None, ge=1, le=10_000_000)
    learning_rate: float | None = describe(
        "Peak learning rate. Default: 1e-4 for lora and qlora, 1e-5 for full fine-tuning.",
        default=None,
        gt=0.0,
        le=1.0,
    )
    scheduler: Literal["cosine", "linear", "constant"] = describe(
        "Learning-rate schedule after warm-up.", default="cosine"
    )
    warmup_ratio: float = describe("Fraction of the steps spent warming up.", default=0.03, ge=0.0, le=0.5)
    weight_decay: float = describe("AdamW weight decay.", default=0.0, ge=0.0, le=1.0)
    max_grad_norm: float = describe("Gradient clipping norm (0 disables clipping).", default=1.0, ge=0.0)
    max_seq_length: int = describe(
        "Longest sequence in tokens; longer rows are truncated or dropped (spec.data.overlongRows).",
        default=2048,
        ge=16,
        le=262144,
    )
    batch_tokens: int = describe(
        "Tokens per optimizer step over all ranks (real tokens, not padding). The trainer splits them into "
        "micro-batches and accumulates gradients.",
        default=65536,
        ge=16,
        le=1 << 30,
    )
    packing: bool = describe(
        "Pack several examples into one sequence without attention across their boundaries (no padding).",
        default=True,
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = describe(
        "Recompute activations in the backward pass to save memory. auto: on when the model and batch "
        "would not fit otherwise.",
        default="auto",
    )
    precision: Literal["bf16", "fp16", "fp32"] = describe(
        "Compute precision on GPUs (CPU runs use fp32).", default="bf16"
    )
    seed: int = describe("Seed for shuffling, splits and initialisation.", default=42, ge=0, le=2**31 - 1)
    checkpoint_every_steps: int = describe(
        "Save a resumable checkpoint every this many optimizer steps (and always on preemption).",
        default=200,
        ge=1,
    )
    keep_checkpoints: int = describe("How many of the newest checkpoints to keep.", default=2, ge=1, le=100)
    dpo: DpoSettings = describe("Settings of the dpo objective.", default_factory=DpoSettings)

    @model_validator(mode="after")
    def _rules(self) -> Training:
        return check(TRAINING_RULES, self)


# ---------------------------------------------------------------------------------------------
# spec.evaluation


class Gate(ApiModel):
    """The publication gate: an adapter is published only if it helps the task without forgetting."""

    mode: GateMode = describe(
        "enforce: publish no ModelAdapter when a threshold fails. warn: publish, and say so in the "
        "Evaluated condition. off: publish without comparing.",
        default="enforce",
    )
    max_general_loss_increase: float = describe(
        "Largest relative increase of the loss on spec.data.general over the base model (0.05 = 5%).",
        default=0.05,
        ge=0.0,
        le=100.0,
    )
    min_task_loss_decrease: float = describe(
        "Smallest relative decrease of the loss on the task eval data compared with the base model "
        "(0 = must not get worse).",
        default=0.0,
        ge=-1.0,
        le=1.0,
    )


class Evaluation(ApiModel):
    """Evaluation during and after training."""

    every_steps: int | None = describe(
        "Evaluate on the task eval data every this many steps (and always at the end).", default=None, ge=1
    )
    max_samples: int = describe(
        "Rows of each eval set used (the first ones after the seeded shuffle).", default=512, ge=1, le=1_000_000
    )
    metrics: list[Literal["exactMatch", "jsonValid"]] = describe(
        "Generation scores on the task eval data besides the loss: exactMatch compares the generated "
        "completion with the reference, jsonValid counts completions that parse as JSON.",
        default_factory=list,
        max_length=2,
    )
    gate: Gate = describe("The gate that decides whether the adapter is published.", default_factory=Gate)


# ---------------------------------------------------------------------------------------------
# spec.resources, spec.template


class Resources(ApiModel):
    """Compute for the training pods: one pod per node, all GPUs of the node in it."""

    nodes: int = describe(
        "Pods (one per node); ranks come from the Indexed Job's completion index.", default=1, ge=1, le=256
    )
    gpus_per_node: int = describe("GPUs per pod (0 for a CPU-only run).", default=1, ge=0, le=16)
    gpu_resource: text(253, r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", 1) = describe(
        "Extended resource name of the GPUs.", default="nvidia.com/gpu"
    )
    cpu: PositiveQuantity | None = describe('CPU request and limit per pod, for example "32".', default=None)
    memory: PositiveQuantity | None = describe("Memory request and limit per pod, for example 256Gi.", default=None)
    shared_memory: PositiveQuantity | None = describe(
        "Size of /dev/shm (a memory-backed emptyDir) for dataloader workers and NCCL. Default: 1Gi.",
        default=None,
    )


# What the operator sets in the trainer's environment (render/job.py; a unit test keeps the two in
# step): the rank, the trainer's directories and where libraries cache on a read-only root. A user's
# value would silently win over the operator's (the later entry of a name does), so it is refused.
# OMP_NUM_THREADS stays the user's to tune.
RESERVED_ENV_NAMES = (
    "MACHINE_RANK",
    "POD_NAME",
    "HOME",
    "TMPDIR",
    "HF_HOME",
    "TRITON_CACHE_DIR",
    "XDG_CACHE_HOME",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
)
RESERVED_ENV_PREFIX = "FINETUNE_"

ENV_RULES = [
    Rule(
        cel=f"!(self.name in {list(RESERVED_ENV_NAMES)}) && !self.name.startsWith('{RESERVED_ENV_PREFIX}')",
        message=f"spec.template.env[].name: {', '.join(RESERVED_ENV_NAMES)} and {RESERVED_ENV_PREFIX}* are set by "
        "the operator for the trainer; choose another name",
        holds=lambda e: e.name not in RESERVED_ENV_NAMES and not e.name.startswith(RESERVED_ENV_PREFIX),
        field_path=".name",
    )
]


class EnvVar(ApiModel):
    """An environment variable of the trainer container (a core/v1 EnvVar)."""

    cel_rules: ClassVar[list[Rule]] = ENV_RULES

    name: text(256, r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", 1) = describe("Name of the variable.")
    value: text(32768) | None = describe("Literal value.", default=None)
    value_from: dict[str, Any] | None = describe(
        "Source of the value (a core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef...).", default=None
    )

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        return check(ENV_RULES, self)


# What the operator itself mounts into the trainer (render/job.py; a unit test keeps the two in step).
RESERVED_VOLUME_NAMES = ("config", "scratch", "shm", "progress-token", "shared-model-cache")
RESERVED_VOLUME_PREFIXES = ("credentials-", "pvc-")
RESERVED_MOUNT_PATHS = (
    "/etc/finetune",
    "/scratch",
    "/dev/shm",  # noqa: S108 a path the operator reserves in the pod, not a temporary file
    "/var/run/finetune",
    "/mnt/pvc",
    "/var/cache/finetune-shared",
)

# The volume types the restricted Pod Security Standard allows, by their core/v1 Volume field names:
# none of them reaches the node's filesystem, devices or another namespace.
VOLUME_SOURCES = {
    "config_map": "configMap",
    "csi": "csi",
    "downward_api": "downwardAPI",
    "empty_dir": "emptyDir",
    "ephemeral": "ephemeral",
    "persistent_volume_claim": "persistentVolumeClaim",
    "projected": "projected",
    "secret": "secret",
}

VOLUME_RULES = [
    Rule(
        cel="[" + ", ".join(f"has(self.{source})" for source in VOLUME_SOURCES.values()) + "].exists_one(s, s)",
        message="spec.template.volumes[] needs exactly one source of the types restricted Pod Security allows: "
        + ", ".join(VOLUME_SOURCES.values()),
        holds=lambda v: sum(getattr(v, field) is not None for field in VOLUME_SOURCES) == 1,
    ),
    Rule(
        cel=f"!(self.name in {list(RESERVED_VOLUME_NAMES)}) && "
        + " && ".join(f"!self.name.startsWith('{prefix}')" for prefix in RESERVED_VOLUME_PREFIXES),
        message=f"spec.template.volumes[].name is the operator's: avoid {', '.join(RESERVED_VOLUME_NAMES)} and "
        f"names starting with {' or '.join(RESERVED_VOLUME_PREFIXES)}",
        holds=lambda v: v.name not in RESERVED_VOLUME_NAMES and not v.name.startswith(RESERVED_VOLUME_PREFIXES),
        field_path=".name",
    ),
]


def _volume_source(description: str, alias: str | None = None) -> Any:
    return describe(description, default=None, **({"alias": alias} if alias else {}))


class Volume(ApiModel):
    """An extra volume of the pods: a core/v1 Volume of a type restricted Pod Security allows."""

    cel_rules: ClassVar[list[Rule]] = VOLUME_RULES

    name: LabelName = describe("Name of the volume, referenced by volumeMounts.")
    config_map: dict[str, Any] | None = _volume_source("A ConfigMap's keys as files (core/v1 ConfigMapVolumeSource).")
    csi: dict[str, Any] | None = _volume_source("An inline CSI volume (core/v1 CSIVolumeSource).")
    downward_api: dict[str, Any] | None = _volume_source(
        "Pod fields as files (core/v1 DownwardAPIVolumeSource).", alias="downwardAPI"
    )
    empty_dir: dict[str, Any] | None = _volume_source("A scratch directory (core/v1 EmptyDirVolumeSource).")
    ephemeral: dict[str, Any] | None = _volume_source(
        "A claim created and deleted with the pod (core/v1 EphemeralVolumeSource)."
    )
    persistent_volume_claim: dict[str, Any] | None = _volume_source(
        "A PersistentVolumeClaim of this namespace (core/v1 PersistentVolumeClaimVolumeSource)."
    )
    projected: dict[str, Any] | None = _volume_source(
        "Secrets, ConfigMaps, downward API and tokens in one directory (core/v1 ProjectedVolumeSource)."
    )
    secret: dict[str, Any] | None = _volume_source("A Secret's keys as files (core/v1 SecretVolumeSource).")

    @model_validator(mode="before")
    @classmethod
    def _only_allowed_types(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = {"name", *VOLUME_SOURCES, *VOLUME_SOURCES.values()}
            refused = sorted(key for key in data if key not in allowed)
            if refused:
                raise ValueError(
                    f"{', '.join(refused)}: volumes may be of the types restricted Pod Security allows only: "
                    f"{', '.join(VOLUME_SOURCES.values())}"
                )
        return data

    @model_validator(mode="after")
    def _rules(self) -> Volume:
        return check(VOLUME_RULES, self)


def _reserved_mount_pattern() -> str:
    """The CEL twin of "normalised, the path is within a reserved one": '.' and empty segments may come
    between the reserved path's segments (``..`` is refused by a rule of its own)."""
    between = "/([.]?/)*"
    reserved = "|".join(between.join(path.strip("/").split("/")) for path in RESERVED_MOUNT_PATHS)
    return f"(?s)^{between}({reserved})(/.*)?$"


RESERVED_MOUNT_PATTERN = _reserved_mount_pattern()

VOLUME_MOUNT_RULES = [
    Rule(
        cel="self.mountPath.startsWith('/')",
        message="spec.template.volumeMounts[].mountPath must be an absolute path",
        holds=lambda m: m.mount_path.startswith("/"),
        field_path=".mountPath",
    ),
    Rule(
        cel="!self.mountPath.split('/').exists(s, s == '..')",
        message="spec.template.volumeMounts[].mountPath must not have '..' segments: name the directory itself",
        holds=lambda m: ".." not in m.mount_path.split("/"),
        field_path=".mountPath",
    ),
    Rule(
        cel=f"!self.mountPath.matches('{RESERVED_MOUNT_PATTERN}')",
        message=f"spec.template.volumeMounts[].mountPath must not be within {', '.join(RESERVED_MOUNT_PATHS)}, where "
        "the operator mounts the trainer's configuration, scratch space, tokens, credentials and claims",
        holds=lambda m: (
            not any(is_within(normalised_mount_path(m.mount_path), reserved) for reserved in RESERVED_MOUNT_PATHS)
        ),
        field_path=".mountPath",
    ),
]


class VolumeMount(ApiModel):
    """An extra mount of the trainer container (a core/v1 VolumeMount)."""

    cel_rules: ClassVar[list[Rule]] = VOLUME_MOUNT_RULES

    name: LabelName = describe("Name of a volume of spec.template.volumes.")
    mount_path: text(1024, min_length=1) = describe(
        "Absolute path in the container; not within the operator's own mounts."
    )
    read_only: bool | None = describe("Mount read-only.", default=None)
    sub_path: text(1024) | None = describe("Path within the volume to mount instead of its root.", default=None)
    sub_path_expr: text(1024) | None = describe(
        "Like subPath, with $(VAR_NAME) expanded from the container's environment.", default=None
    )
    mount_propagation: Literal["None", "HostToContainer", "Bidirectional"] | None = describe(
        "How mounts propagate between host and container.", default=None
    )
    recursive_read_only: Literal["Disabled", "IfPossible", "Enabled"] | None = describe(
        "Whether a read-only mount is read-only recursively.", default=None
    )

    @model_validator(mode="after")
    def _rules(self) -> VolumeMount:
        return check(VOLUME_MOUNT_RULES, self)


class Template(ApiModel):
    """Pod-level settings passed through to the training pods: a small, safe subset of PodSpec."""

    image: text(1024) | None = describe(
        "Trainer image. Default: the operator's configured trainer image.", default=None
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = describe(
        "Pull policy of the trainer image.", default=None
    )
    node_selector: dict[str, text(1024)] = describe(
        "Node labels the pods must match (a core/v1 PodSpec nodeSelector).", default_factory=dict, max_length=64
    )
    tolerations: list[dict[str, Any]] = describe(
        "Tolerations of the pods (core/v1 Toleration). Pods requesting GPUs always tolerate the "
        "NoSchedule taint named after the GPU resource.",
        default_factory=list,
        max_length=64,
    )
    affinity: dict[str, Any] | None = describe("Affinity of the pods (a core/v1 Affinity).", default=None)
    priority_class_name: text(253) | None = describe("PriorityClass of the pods.", default=None)
    service_account_name: ObjectName | None = describe(
        "ServiceAccount for the pods. Default: one the operator creates per job, without API permissions.",
        default=None,
    )
    image_pull_secrets: list[LocalObjectReference] = describe(
        "Secrets for pulling the trainer image.", default_factory=list, max_length=16
    )
    env: list[EnvVar] = describe(
        "Extra environment variables of the trainer. Names the operator sets (FINETUNE_*, MACHINE_RANK, HOME...) "
        "are refused; OMP_NUM_THREADS may be set.",
        default_factory=list,
        max_length=128,
    )
    volumes: list[Volume] = describe(
        "Extra volumes of the pods, of the types restricted Pod Security allows (configMap, csi, downwardAPI, "
        "emptyDir, ephemeral, persistentVolumeClaim, projected, secret).",
        default_factory=list,
        max_length=64,
    )
    volume_mounts: list[VolumeMount] = describe(
        "Extra volume mounts of the trainer container (core/v1 VolumeMount).", default_factory=list, max_length=64
    )
    pod_labels: dict[str, text(63)] = describe("Extra labels of the pods.", default_factory=dict, max_length=64)
    pod_annotations: dict[str, text(4096)] = describe(
        "Extra annotations of the pods.", default_factory=dict, max_length=64
    )


class Output(ApiModel):
    """Where checkpoints and published artifacts are written."""

    uri: StorageUri | None = describe(
        "Prefix for checkpoints (<uri>/<namespace>/<job>/checkpoints/<version>/) and published artifacts "
        "(<uri>/<namespace>/<adapter>/<version>/): s3://bucket/prefix/ or pvc://claim/path. Default: the "
        "operator's configured output location.",
        default=None,
    )
    credentials_secret_ref: SecretReference | None = describe(
        "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL and "
        "AWS_REGION for s3:// outputs. Default: the operator's configured output credentials.",
        default=None,
    )


class AdapterPublishing(ApiModel):
    """The ModelAdapter resource published when the job succeeds and the gate allows."""

    name: LabelName | None = describe("Name of the ModelAdapter. Default: the FineTuneJob's name.", default=None)
    labels: dict[str, text(63)] = describe("Extra labels of the ModelAdapter.", default_factory=dict, max_length=64)


# ---------------------------------------------------------------------------------------------
# spec


def _formats(spec: FineTuneJobSpec) -> set[str]:
    return {s.format or spec.data.format for s in spec.data.train}


SPEC_RULES = [
    Rule(
        cel="self.objective != 'dpo' || ((self.data.format == 'auto' || self.data.format == 'preference') "
        "&& self.data.train.all(s, !has(s.format) || s.format == 'preference'))",
        message="spec.objective dpo needs preference data: spec.data.format (and each train source's format) "
        "must be preference or auto",
        holds=lambda s: s.objective != "dpo" or _formats(s) <= {"auto", "preference"},
    ),
    Rule(
        cel="self.objective == 'dpo' || (self.data.format != 'preference' "
        "&& self.data.train.all(s, !has(s.format) || s.format != 'preference'))",
        message="spec.data.format preference (prompt/chosen/rejected) is only for spec.objective dpo",
        holds=lambda s: s.objective == "dpo" or "preference" not in _formats(s),
    ),
    Rule(
        cel="self.objective != 'pretrain' || ((self.data.format == 'auto' || self.data.format == 'text') "
        "&& self.data.train.all(s, !has(s.format) || s.format == 'text'))",
        message="spec.objective pretrain trains on raw text: spec.data.format (and each train source's "
        "format) must be text or auto",
        holds=lambda s: s.objective != "pretrain" or _formats(s) <= {"auto", "text"},
    ),
    Rule(
        cel="self.method.type != 'qlora' || self.resources.gpusPerNode > 0",
        message="spec.method.type qlora needs GPUs: set spec.resources.gpusPerNode to 1 or more "
        "(4-bit quantisation runs on NVIDIA GPUs only)",
        holds=lambda s: s.method.type != "qlora" or s.resources.gpus_per_node > 0,
    ),
    Rule(
        cel="self.evaluation.gate.mode != 'enforce' || has(self.data.general)",
        message="spec.data.general is required while spec.evaluation.gate.mode is enforce: give general data "
        "for the forgetting check, or set the gate to warn or off",
        holds=lambda s: s.evaluation.gate.mode != "enforce" or s.data.general is not None,
    ),
    Rule(
        cel="!has(self.evaluation.metrics) || size(self.evaluation.metrics) == 0 || self.objective == 'sft'",
        message="spec.evaluation.metrics (exactMatch, jsonValid) score generated completions and need "
        "spec.objective sft",
        holds=lambda s: not s.evaluation.metrics or s.objective == "sft",
    ),
]

SPEC_TRANSITION_RULES = [
    immutable("model", "spec.model", "create a new FineTuneJob to train another base model"),
    immutable("method", "spec.method", "create a new FineTuneJob to change the method"),
    immutable("objective", "spec.objective", "create a new FineTuneJob to change the objective"),
    immutable("data", "spec.data", "create a new FineTuneJob to train on other data"),
    Rule(
        cel="self.resources == oldSelf.resources || oldSelf.suspend",
        message="spec.resources can change only while the job is suspended: set spec.suspend to true first",
    ),
]


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what, how, and where the result goes."""

    cel_rules: ClassVar[list[Rule]] = SPEC_RULES + SPEC_TRANSITION_RULES

    suspend: bool = describe(
        "Suspend the training Job (its pods are deleted; a resumed job continues from its last "
        "checkpoint). Kueue sets it while the job waits in a queue.",
        default=False,
    )
    model: ModelSource = describe("The base model.")
    method: Method = describe("LoRA, QLoRA or full fine-tuning.", default_factory=Method)
    objective: Objective = describe(
        "sft: supervised fine-tuning on prompt/completion or chat data (loss on the answers only). "
        "pretrain: continued pre-training on raw domain text. dpo: preference tuning on "
        "prompt/chosen/rejected data (the practical form of RLHF).",
        default="sft",
    )
    data: Data = describe("Training, evaluation and general data.")
    training: Training = describe("Optimisation settings.", default_factory=Training)
    evaluation: Evaluation = describe("Evaluation and the publication gate.", default_factory=Evaluation)
    resources: Resources = describe("Pods, GPUs, CPU and memory.", default_factory=Resources)
    template: Template = describe("Pod-level settings passed through to the training pods.", default_factory=Template)
    output: Output = describe("Where checkpoints and artifacts go.", default_factory=Output)
    adapter: AdapterPublishing = describe("The ModelAdapter to publish.", default_factory=AdapterPublishing)
    backoff_limit: int = describe(
        "Retries of failed training pods; each retry resumes from the last checkpoint. Configuration and "
        "data errors are not retried.",
        default=3,
        ge=0,
        le=100,
    )
    active_deadline_seconds: int | None = describe(
        "Longest the training may run, retries included, before it is stopped and failed.", default=None, ge=1
    )
    ttl_seconds_after_finished: int | None = describe(
        "Delete the training Job and its pods this long after the job finished (the FineTuneJob and the "
        "ModelAdapter stay).",
        default=None,
        ge=0,
    )

    @model_validator(mode="after")
    def _rules(self) -> FineTuneJobSpec:
        return check(SPEC_RULES, self)


# ---------------------------------------------------------------------------------------------
# status


class Progress(ApiModel):
    """Training progress pushed by the trainer's rank 0."""

    step: Int64 = describe("Optimizer steps done.", default=0, ge=0)
    total_steps: Int64 | None = describe("Optimizer steps planned.", default=None, ge=0)
    percent: int | None = describe("step / totalSteps in percent.", default=None, ge=0, le=100)
    epoch: float | None = describe("Passes over the training mix so far.", default=None, ge=0.0)
    train_loss: float | None = describe("Training loss, averaged since the previous report.", default=None)
    eval_loss: float | None = describe("Latest loss on the task eval data.", default=None)
    learning_rate: float | None = describe("Current learning rate.", default=None, ge=0.0)
    tokens_per_second: float | None = describe(
        "Real (non-padding) tokens per second over all ranks.", default=None, ge=0.0
    )
    eta_seconds: Int64 | None = describe("Estimated seconds until training ends.", default=None, ge=0)
    eta: text(32) | None = describe("The same estimate for people, for example 1h5m.", default=None)
    updated_at: Timestamp | None = describe("When the trainer sent this report.", default=None)


class CheckpointStatus(ApiModel):
    """The newest complete checkpoint."""

    step: Int64 = describe("Optimizer step of the checkpoint.", ge=0)
    uri: text(2048) = describe("Where it is stored.")
    saved_at: Timestamp | None = describe("When it was saved.", default=None)


class LossComparison(ApiModel):
    """Base model against adapted model on one eval set."""

    base_loss: float | None = describe("Mean token loss of the base model.", default=None)
    adapter_loss: float | None = describe("Mean token loss of the fine-tuned model.", default=None)
    base_perplexity: float | None = describe("exp(baseLoss).", default=None)
    adapter_perplexity: float | None = describe("exp(adapterLoss).", default=None)
    samples: Int64 | None = describe("Rows evaluated.", default=None, ge=0)
    base_exact_match: float | None = describe("Fraction of exact-match completions of the base model.", default=None)
    adapter_exact_match: float | None = describe("Fraction of exact-match completions after fine-tuning.", default=None)
    base_json_valid: float | None = describe("Fraction of base-model completions that parse as JSON.", default=None)
    adapter_json_valid: float | None = describe("Fraction of fine-tuned completions that parse as JSON.", default=None)


class EvaluationSummary(ApiModel):
    """The final evaluation and the gate's verdict."""

    task: LossComparison | None = describe("On the task eval data.", default=None)
    general: LossComparison | None = describe("On the general data (the forgetting check).", default=None)
    gate: GateResult | None = describe(
        "Passed, Failed (not published when enforced), Warned (failed but published, mode warn) or Skipped.",
        default=None,
    )
    message: text(4096) | None = describe("The gate's reasoning with the numbers.", default=None)


class AdapterStatus(ApiModel):
    """The published ModelAdapter."""

    name: text(253) = describe("Name of the ModelAdapter in this namespace.")
    uri: text(2048) | None = describe("Where the artifact is stored.", default=None)
    digest: text(80) | None = describe("sha256 digest of the artifact.", default=None)


class ArtifactStatus(ApiModel):
    """The artifact the trainer stored, as it reported it; published as status.adapter once the gate allows."""

    uri: text(2048) = describe("Directory of the artifact.")
    digest: text(71, r"^sha256:[a-f0-9]{64}$") = describe("Digest over the artifact's files (its manifest's).")
    size_bytes: Int64 = describe("Total size of the files.", ge=0)


class ModelStatus(ApiModel):
    """The base model as resolved by the trainer."""

    revision: text(255) | None = describe("Exact commit of an hf:// model.", default=None)


class QueueStatus(ApiModel):
    """Where Kueue has the job (a job with the kueue.x-k8s.io/queue-name label), from Kueue's Workload."""

    state: Literal["Queued", "Admitted", "Inadmissible", "Preempted", "Evicted", "Finished"] = describe(
        "Queued (waiting for quota), Admitted, Inadmissible (its LocalQueue or ClusterQueue is missing or "
        "stopped), Preempted or Evicted (Kueue took the quota back; the job waits to be admitted again), "
        "Finished (the training Job ended and its quota is released)."
    )
    local_queue: text(63) = describe("The LocalQueue in the job's namespace that the label names.")
    cluster_queue: text(253) | None = describe("The ClusterQueue the LocalQueue feeds, once known.", default=None)
    admission_time: Timestamp | None = describe("When Kueue last admitted the job.", default=None)
    preemptions: Int64 = describe("Times Kueue preempted the job's current training Job.", default=0, ge=0)


class FineTuneJobStatus(ApiModel):
    """What the operator observed. Written only through the status subresource."""

    phase: Phase | None = describe(
        "Pending, Suspended, Running, Succeeded or Failed: a summary for display; the conditions are authoritative.",
        default=None,
    )
    observed_generation: Int64 | None = describe("The metadata.generation this status describes.", default=None, ge=0)
    conditions: list[Condition] = describe(
        "Created, Suspended, Running, Succeeded, Failed, Evaluated, Published, ReferencesResolved, (for a "
        "job that names a catalog model) ModelResolved, and Admitted and Preempted for a job queued by Kueue.",
        default_factory=list,
        max_length=16,
        json_schema_extra=CONDITIONS_LIST_MAP,
    )
    start_time: Timestamp | None = describe("When training pods first ran.", default=None)
    completion_time: Timestamp | None = describe("When the job succeeded or failed.", default=None)
    restarts: Int64 = describe("Training pods that failed and were retried.", default=0, ge=0)
    resumed_from_step: Int64 | None = describe("The checkpoint step the latest retry resumed from.", default=None, ge=0)
    job_name: text(253) | None = describe("Name of the batch/v1 Job that runs the training.", default=None)
    queue: QueueStatus | None = describe("Where Kueue has the job, for a job queued by Kueue.", default=None)
    model: ModelStatus | None = describe("The base model as resolved.", default=None)
    plan: Plan | None = describe(
        "What the CPU preflight counted before any GPU was claimed, and the estimate of time and GPU-hours.",
        default=None,
    )
    progress: Progress | None = describe("Live progress from the trainer.", default=None)
    checkpoint: CheckpointStatus | None = describe("The newest complete checkpoint.", default=None)
    evaluation: EvaluationSummary | None = describe("The final evaluation and the gate's verdict.", default=None)
    artifact: ArtifactStatus | None = describe("The stored artifact, as the trainer reported it.", default=None)
    adapter: AdapterStatus | None = describe("The published ModelAdapter.", default=None)


# ---------------------------------------------------------------------------------------------
# the object


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta the operator reads; everything else passes through."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: text(253) = describe("Name of the object.")
    namespace: text(63) | None = describe("Namespace of the object.", default=None)
    uid: text(64) | None = describe("UID.", default=None)
    generation: int | None = describe("Generation.", default=None)
    creation_timestamp: Timestamp | None = describe("Creation time.", default=None)
    labels: dict[str, str] = describe("Labels.", default_factory=dict)
    annotations: dict[str, str] = describe("Annotations.", default_factory=dict)


JOB_NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"  # a DNS-1035 label: Service names must start with a letter

OBJECT_RULES = [
    Rule(
        cel=f"size(self.metadata.name) <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{JOB_NAME_PATTERN}')",
        message=f"metadata.name must be a DNS label of at most {MAX_NAME_LENGTH} characters starting with a "
        "letter: it names the training Job, its Service and its pods",
        holds=lambda job: (
            len(job.metadata.name) <= MAX_NAME_LENGTH and re.fullmatch(JOB_NAME_PATTERN, job.metadata.name) is not None
        ),
    )
]


class FineTuneJob(ApiModel):
    """A fine-tuning run of a large language model, published as a ModelAdapter when it passes its gate."""

    cel_rules: ClassVar[list[Rule]] = OBJECT_RULES

    api_version: Literal["finetune.dev/v1alpha1"] = Field(default="finetune.dev/v1alpha1", alias="apiVersion")
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    @model_validator(mode="after")
    def _rules(self) -> FineTuneJob:
        return check(OBJECT_RULES, self)
