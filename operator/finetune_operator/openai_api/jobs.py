"""OpenAI fine-tuning jobs and FineTuneJobs, both ways.

request → FineTuneJob: ``model`` names a FineTuneModel of the catalog (spec.model.name);
``training_file``/``validation_file`` become spec.data.train/eval at the stored files' URIs; ``method``
supervised is objective sft on chat data, dpo is objective dpo on preference data with its ``beta``;
``n_epochs`` → spec.training.epochs, ``learning_rate_multiplier`` times the method's default learning rate →
spec.training.learningRate, ``batch_size`` examples times the model's maxSeqLength → spec.training.batchTokens
(ours counts tokens, not examples), ``seed`` → spec.training.seed, ``suffix`` names the ModelAdapter
(the ``fine_tuned_model``), ``metadata`` is kept in an annotation. What OpenAI returns but a FineTuneJob
does not hold (file ids, the hyperparameters as asked) is kept in annotations too.

FineTuneJob → job object: status from phase and conditions, unix timestamps, ``fine_tuned_model`` from
status.adapter, ``error`` from the condition that failed the job.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import invalid
from .files import FILE_ID_PATTERN
from .params import a_number, a_string, an_integer, an_object, metadata, only_known

PREFIX = "openai.finetune.dev/"
TRAINING_FILE, VALIDATION_FILE = PREFIX + "training-file", PREFIX + "validation-file"
HYPERPARAMETERS, METADATA, SUFFIX = PREFIX + "hyperparameters", PREFIX + "metadata", PREFIX + "suffix"
CANCELLED_AT = PREFIX + "cancelled-at"
CREATED_BY_LABEL = PREFIX + "created-by"
# Published=False reasons that stay until someone acts: the job failed, in OpenAI's terms.
UNPUBLISHABLE = ("GateFailed", "ArtifactUnknown", "AdapterNameTaken")

JOB_PARAMETERS = (
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "integrations",
)
SUPERVISED_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
DPO_HYPERPARAMETERS = (*SUPERVISED_HYPERPARAMETERS, "beta")
# spec.training.learningRate's defaults (api/finetunejob.py): the multiplier scales these.
BASE_LEARNING_RATE = {"lora": 1e-4, "qlora": 1e-4, "full": 1e-5}
DEFAULT_MAX_SEQ_LENGTH = 2048
DEFAULT_SEED = 42  # spec.training.seed's default
MAX_SUFFIX = 64
_NOT_IN_NAME = re.compile(r"[^a-z0-9-]+")


def new_job_name() -> str:
    """A FineTuneJob name that is also the OpenAI job id: a DNS label starting with a letter."""
    return f"ftjob-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None = None
    method: str = "supervised"  # or dpo
    n_epochs: int | None = None  # None: "auto"
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_kind(self) -> str:
        return "preference" if self.method == "dpo" else "messages"

    def hyperparameters(self) -> dict[str, Any]:
        """As OpenAI echoes them: "auto" for what was left to us."""
        values = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.method == "dpo":
            values["beta"] = self.beta
        return {name: "auto" if value is None else value for name, value in values.items()}


def _file_id(value: Any, param: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not FILE_ID_PATTERN.fullmatch(value):
        raise invalid(f"{param} must be the id of a file uploaded with purpose fine-tune", param, "invalid_file_id")
    return value


def _hyperparameters(value: Any, param: str, names: tuple[str, ...]) -> dict[str, Any]:
    values = an_object(value, param)
    only_known(values, names, f"{param}.")
    checked = {
        "n_epochs": an_integer(values.get("n_epochs", "auto"), f"{param}.n_epochs", 1, 50, auto=True),
        "batch_size": an_integer(values.get("batch_size", "auto"), f"{param}.batch_size", 1, 256, auto=True),
        "learning_rate_multiplier": a_number(
            values.get("learning_rate_multiplier", "auto"), f"{param}.learning_rate_multiplier", 0.0, 10.0, auto=True
        ),
    }
    if "beta" in names:
        checked["beta"] = a_number(values.get("beta", "auto"), f"{param}.beta", 0.0, 2.0, auto=True)
    return checked


def _method(value: Any) -> tuple[str, dict[str, Any] | None]:
    method = an_object(value, "method")
    kind = method.get("type")
    if kind not in ("supervised", "dpo"):
        raise invalid("method.type must be supervised or dpo (reinforcement is not offered)", "method.type")
    only_known(method, ("type", kind), "method.")
    settings = an_object(method.get(kind) or {}, f"method.{kind}")
    only_known(settings, ("hyperparameters",), f"method.{kind}.")
    if "hyperparameters" not in settings:
        return kind, None
    names = DPO_HYPERPARAMETERS if kind == "dpo" else SUPERVISED_HYPERPARAMETERS
    return kind, _hyperparameters(settings["hyperparameters"], f"method.{kind}.hyperparameters", names)


def parse_job_request(body: Any) -> JobRequest:
    """The request of POST /v1/fine_tuning/jobs, checked whole; ApiError naming the first wrong parameter."""
    values = an_object(body, "body")
    only_known(values, JOB_PARAMETERS)
    if values.get("integrations"):
        raise invalid("integrations are not offered by this API: leave integrations out", "integrations")
    method, hyperparameters = ("supervised", None)
    if values.get("method") is not None:
        method, hyperparameters = _method(values["method"])
    if values.get("hyperparameters") is not None:
        if hyperparameters is not None:
            raise invalid("give hyperparameters in method only, not also at the top level", "hyperparameters")
        if method != "supervised":
            raise invalid("top-level hyperparameters are for supervised jobs: use method.dpo", "hyperparameters")
        hyperparameters = _hyperparameters(values["hyperparameters"], "hyperparameters", SUPERVISED_HYPERPARAMETERS)
    suffix = a_string(values.get("suffix"), "suffix", MAX_SUFFIX, required=False)
    if suffix is not None and not _NOT_IN_NAME.sub("", suffix.lower()):
        raise invalid("suffix needs letters or digits: it becomes part of the model's name", "suffix")
    return JobRequest(
        model=a_string(values.get("model"), "model", 253),
        training_file=_file_id(values.get("training_file"), "training_file", required=True),
        validation_file=_file_id(values.get("validation_file"), "validation_file", required=False),
        method=method,
        suffix=suffix,
        seed=None if values.get("seed") is None else an_integer(values["seed"], "seed", 0, 2**31 - 1),
        metadata=metadata(values.get("metadata")),
        **(hyperparameters or {}),
    )


@dataclass(frozen=True)
class ModelHints:
    """What the catalog entry says that the mapping needs: its default method and sequence length."""

    method_type: str = "lora"
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH


@dataclass(frozen=True)
class JobPolicy:
    """The admin's choices for jobs made through the API."""

    data_secret: str | None = None  # a Secret of that name in each namespace reads the files location
    general_data_uri: str | None = None  # set: the gate is enforced against it; unset: the gate warns
    template: dict[str, Any] = field(default_factory=dict)  # spec.template of every job: placement on a pool


def adapter_name(job_name: str, suffix: str | None) -> str:
    """The ModelAdapter's name (the ``fine_tuned_model``): the job's name, and the suffix as a DNS label part."""
    if not suffix:
        return job_name
    cleaned = _NOT_IN_NAME.sub("-", suffix.lower()).strip("-")[: 63 - len(job_name) - 1].strip("-")
    return f"{job_name}-{cleaned}" if cleaned else job_name


def job_manifest(
    request: JobRequest,
    namespace: str,
    name: str,
    training_uri: str,
    validation_uri: str | None,
    hints: ModelHints,
    policy: JobPolicy,
) -> dict[str, Any]:
    training: dict[str, Any] = {}
    if request.n_epochs is not None:
        training["epochs"] = request.n_epochs
    if request.batch_size is not None:
        training["batchTokens"] = request.batch_size * hints.max_seq_length
    if request.learning_rate_multiplier is not None:
        base = BASE_LEARNING_RATE.get(hints.method_type, BASE_LEARNING_RATE["lora"])
        training["learningRate"] = min(1.0, request.learning_rate_multiplier * base)
    if request.seed is not None:
        training["seed"] = request.seed
    if request.beta is not None:
        training["dpo"] = {"beta": request.beta}
    data: dict[str, Any] = {"format": request.data_kind, "train": [{"uri": training_uri}]}
    if validation_uri:
        data["eval"] = {"uri": validation_uri}
    if policy.data_secret:
        data["credentialsSecretRef"] = {"name": policy.data_secret}
    if policy.general_data_uri:
        data["general"] = {"uri": policy.general_data_uri, "format": "text"}
    annotations = {
        TRAINING_FILE: request.training_file,
        HYPERPARAMETERS: json.dumps(request.hyperparameters(), separators=(",", ":")),
    }
    if request.validation_file:
        annotations[VALIDATION_FILE] = request.validation_file
    if request.metadata:
        annotations[METADATA] = json.dumps(request.metadata, separators=(",", ":"))
    if request.suffix:
        annotations[SUFFIX] = request.suffix
    spec: dict[str, Any] = {
        "model": {"name": request.model},
        "objective": "dpo" if request.method == "dpo" else "sft",
        "data": data,
        "evaluation": {"gate": {"mode": "enforce" if policy.general_data_uri else "warn"}},
        "adapter": {"name": adapter_name(name, request.suffix)},
    }
    if training:
        spec["training"] = training
    if policy.template:
        spec["template"] = policy.template
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {CREATED_BY_LABEL: "openai-api"},
            "annotations": annotations,
        },
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# FineTuneJob -> job object


def unix(timestamp: str | None) -> int | None:
    """An RFC 3339 timestamp of the API server as unix seconds."""
    if not timestamp:
        return None
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def conditions_of(finetunejob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (finetunejob.get("status") or {}).get("conditions") or []}


def _is(conditions: dict[str, dict[str, Any]], type_: str, value: str) -> bool:
    return (conditions.get(type_) or {}).get("status") == value


def failure_of(finetunejob: dict[str, Any]) -> dict[str, Any] | None:
    """The condition that failed the job, as OpenAI's error: the operator's reason and message."""
    conditions = conditions_of(finetunejob)
    for type_, value in (("Failed", "True"), ("Published", "False"), ("ModelResolved", "False")):
        condition = conditions.get(type_)
        if condition and condition.get("status") == value:
            if type_ == "Published" and condition.get("reason") not in UNPUBLISHABLE:
                continue  # PublishFailed (the API server failed) is retried by the operator
            return {"code": condition.get("reason") or type_, "message": condition.get("message") or "", "param": None}
    return None


def job_status(finetunejob: dict[str, Any]) -> str:
    """One of OpenAI's six: validating_files, queued, running, succeeded, failed, cancelled."""
    status = finetunejob.get("status") or {}
    conditions = conditions_of(finetunejob)
    phase = status.get("phase")
    if failure_of(finetunejob) is not None:
        return "failed"
    if phase == "Succeeded":
        # OpenAI's succeeded comes with its fine_tuned_model: until the adapter is published the job is running.
        return "succeeded" if _is(conditions, "Published", "True") else "running"
    if ((finetunejob.get("metadata") or {}).get("annotations") or {}).get(CANCELLED_AT):
        return "cancelled"
    # A paused job (spec.suspend, before the operator has stopped its pods too) waits to run again: OpenAI has
    # no status of its own for it.
    if (finetunejob.get("spec") or {}).get("suspend") or phase == "Suspended":
        return "queued"
    if phase == "Running":
        return "running"
    if phase == "Pending" and "Created" in conditions:
        return "queued"
    return "validating_files"


def _annotation_json(annotations: dict[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(annotations.get(key) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def model_of(spec: dict[str, Any]) -> str:
    model = spec.get("model") or {}
    return model.get("name") or model.get("servedName") or model.get("uri") or ""


def job_object(finetunejob: dict[str, Any], now: int) -> dict[str, Any]:
    meta = finetunejob.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = finetunejob.get("spec") or {}
    status = finetunejob.get("status") or {}
    state = job_status(finetunejob)
    method = "dpo" if spec.get("objective") == "dpo" else "supervised"
    hyperparameters = _annotation_json(annotations, HYPERPARAMETERS) or {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    progress = status.get("progress") or {}
    eta = progress.get("etaSeconds")
    finished = unix(status.get("completionTime")) if state in ("succeeded", "failed") else None
    if state == "cancelled":
        finished = unix(annotations.get(CANCELLED_AT))
    train = ((spec.get("data") or {}).get("train") or [{}])[0]
    return {
        "id": meta.get("name"),
        "object": "fine_tuning.job",
        "created_at": unix(meta.get("creationTimestamp")) or now,
        "finished_at": finished,
        "model": model_of(spec),
        "fine_tuned_model": (status.get("adapter") or {}).get("name") if state == "succeeded" else None,
        "organization_id": meta.get("namespace"),
        "status": state,
        "error": failure_of(finetunejob) if state == "failed" else None,
        "training_file": annotations.get(TRAINING_FILE) or train.get("uri") or "",
        "validation_file": annotations.get(VALIDATION_FILE),
        "result_files": [],
        "trained_tokens": None,
        "hyperparameters": {k: v for k, v in hyperparameters.items() if k != "beta"},
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
        "seed": (spec.get("training") or {}).get("seed", DEFAULT_SEED),
        "suffix": annotations.get(SUFFIX),
        "user_provided_suffix": annotations.get(SUFFIX),
        "metadata": _annotation_json(annotations, METADATA) or None,
        "estimated_finish": now + int(eta) if state == "running" and isinstance(eta, int | float) else None,
        "integrations": [],
    }


def metadata_matches(job: dict[str, Any], wanted: dict[str, str]) -> bool:
    have = job.get("metadata") or {}
    return all(have.get(key) == value for key, value in wanted.items())
