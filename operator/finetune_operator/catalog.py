"""The model catalog: a job that names a FineTuneModel gets its model, its defaults and its limits.

Pure: a job's spec, the catalog entry it names (or None) and the labels of its namespace in, the
effective spec or a refusal out. The reconciler renders the effective spec exactly as it renders a
job that gave a uri, so everything downstream (references, storage policy, trainer config, the
published ModelAdapter) is the same code for both.

Defaults fill what the job left at the built-in defaults: the API server writes those into every
stored object, so "left at the default" is the only thing the operator can tell from "not given".
Limits are checked on the spec after the defaults, so a default can never get a job past a limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from finetune_core.api import (
    FineTuneJobSpec,
    FineTuneModel,
    LabelSelector,
    LoraSettings,
    Method,
    ModelDefaults,
    ModelLimits,
    ModelSource,
    Resources,
    SecretReference,
    Training,
    format_validation_error,
)
from pydantic import ValidationError

MODEL_NOT_FOUND = "ModelNotFound"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
LIMIT_EXCEEDED = "CatalogLimitExceeded"
DEFAULTS_INVALID = "CatalogDefaultsInvalid"

_BUILT_IN_METHOD = Method()
_BUILT_IN_TRAINING = Training()
_BUILT_IN_RESOURCES = Resources()
_RESOURCE_FIELDS = ("nodes", "gpus_per_node", "gpu_resource", "cpu", "memory", "shared_memory")


@dataclass(frozen=True)
class Resolved:
    """The spec the operator renders: the entry's model in place of its name, its defaults applied."""

    spec: FineTuneJobSpec
    message: str


@dataclass(frozen=True)
class Refused:
    """Why the job may not run as it is; reason is one of the constants above, the message names the limit."""

    reason: str
    message: str


def resolve(
    spec: FineTuneJobSpec,
    entry: FineTuneModel | None,
    namespace: str,
    namespace_labels: Mapping[str, str],
    enforce: bool = True,
) -> Resolved | Refused:
    """The effective spec of a job that names ``entry`` (spec.model.name), or why it is refused.

    ``enforce=False`` for a finished job: its outcome stands whatever the catalog says now (a limit lowered
    since, a namespace left out), and its spec is still needed to publish what it trained."""
    name = spec.model.name
    if name is None:
        raise ValueError("resolve() is for jobs that name a catalog model (spec.model.name)")
    if entry is None:
        return Refused(
            MODEL_NOT_FOUND,
            f"FineTuneModel {name} not found: spec.model.name must name a model of the catalog "
            "(kubectl get finetunemodels); the job proceeds once it exists",
        )
    if enforce and not namespace_allowed(entry.spec.limits, namespace, namespace_labels):
        return Refused(
            NAMESPACE_NOT_ALLOWED,
            f"namespace {namespace} may not use FineTuneModel {name}: it is not in the model's limits.namespaces "
            "and does not match its limits.namespaceSelector",
        )
    try:
        effective = with_defaults(spec, entry)
    except ValidationError as error:
        return Refused(
            DEFAULTS_INVALID,
            f"the defaults of FineTuneModel {name} do not fit this job: "
            + "; ".join(format_validation_error(error))[:1024],
        )
    exceeded = limits_exceeded(effective, name, entry.spec.limits) if enforce else []
    if exceeded:
        return Refused(LIMIT_EXCEEDED, "; ".join(exceeded))
    return Resolved(effective, f"FineTuneModel {name}: {entry.spec.uri}" + _at_revision(entry))


def with_defaults(spec: FineTuneJobSpec, entry: FineTuneModel) -> FineTuneJobSpec:
    """``spec`` with the entry's model and, where it kept the built-in default, the entry's defaults.

    Validated again as a whole: a default may break a rule of the spec (qlora without GPUs, say)."""
    model = ModelSource(
        uri=entry.spec.uri,
        revision=entry.spec.revision,
        credentials_secret_ref=(
            SecretReference(name=entry.spec.credentials_secret_ref.name) if entry.spec.credentials_secret_ref else None
        ),
        served_name=entry.spec.serving_name,
    )
    defaults = entry.spec.defaults
    update = {"model": model}
    if defaults.method is not None and spec.method == _BUILT_IN_METHOD:
        update["method"] = defaults.method
    if defaults.max_seq_length is not None and spec.training.max_seq_length == _BUILT_IN_TRAINING.max_seq_length:
        update["training"] = spec.training.model_copy(update={"max_seq_length": defaults.max_seq_length})
    resources = _resources_with_defaults(spec.resources, defaults)
    if resources != spec.resources:
        update["resources"] = resources
    return FineTuneJobSpec.model_validate(spec.model_copy(update=update).to_api())


def _resources_with_defaults(resources: Resources, defaults: ModelDefaults) -> Resources:
    if defaults.resources is None:
        return resources
    update = {}
    for field in _RESOURCE_FIELDS:
        default = getattr(defaults.resources, field)
        if default is not None and getattr(resources, field) == getattr(_BUILT_IN_RESOURCES, field):
            update[field] = default
    return resources.model_copy(update=update)


def limits_exceeded(spec: FineTuneJobSpec, name: str, limits: ModelLimits) -> list[str]:
    """One message per limit of FineTuneModel ``name`` that ``spec`` exceeds; empty when it fits."""
    of = f"FineTuneModel {name} limits"
    found = []
    if limits.allowed_methods and spec.method.type not in limits.allowed_methods:
        found.append(
            f"spec.method.type {spec.method.type} is not in {of}.allowedMethods ({', '.join(limits.allowed_methods)})"
        )
    resources = spec.resources
    gpus = resources.nodes * resources.gpus_per_node
    if limits.max_gpus is not None and gpus > limits.max_gpus:
        found.append(
            f"spec.resources.gpus {gpus} (nodes {resources.nodes} x gpusPerNode {resources.gpus_per_node}) "
            f"exceeds {of}.maxGPUs {limits.max_gpus}"
        )
    if limits.max_nodes is not None and resources.nodes > limits.max_nodes:
        found.append(f"spec.resources.nodes {resources.nodes} exceeds {of}.maxNodes {limits.max_nodes}")
    found += _length_exceeded(spec.training, of, limits)
    if limits.max_seq_length is not None and spec.training.max_seq_length > limits.max_seq_length:
        found.append(
            f"spec.training.maxSeqLength {spec.training.max_seq_length} exceeds {of}.maxSeqLength "
            f"{limits.max_seq_length}"
        )
    if limits.max_lora_rank is not None and spec.method.type != "full":
        rank = (spec.method.lora or LoraSettings()).rank
        if rank > limits.max_lora_rank:
            found.append(f"spec.method.lora.rank {rank} exceeds {of}.maxLoraRank {limits.max_lora_rank}")
    return found


def _length_exceeded(training: Training, of: str, limits: ModelLimits) -> list[str]:
    """maxEpochs and maxSteps. The steps of an epoch are known only once the data is read, so a job is bounded
    in the unit its limit is given in: under maxEpochs alone a job may not count in steps, and the other way
    round (else either limit could be stepped around)."""
    if training.max_steps is not None:
        if limits.max_steps is not None:
            if training.max_steps > limits.max_steps:
                return [f"spec.training.maxSteps {training.max_steps} exceeds {of}.maxSteps {limits.max_steps}"]
        elif limits.max_epochs is not None:
            return [
                f"spec.training.maxSteps is not bounded by {of}: it sets maxEpochs {_number(limits.max_epochs)} "
                "and no maxSteps, so give spec.training.epochs instead"
            ]
        return []
    epochs = training.epochs or 1.0
    if limits.max_epochs is not None:
        if epochs > limits.max_epochs:
            return [f"spec.training.epochs {_number(epochs)} exceeds {of}.maxEpochs {_number(limits.max_epochs)}"]
    elif limits.max_steps is not None:
        return [
            f"spec.training.epochs is not bounded by {of}: it sets maxSteps {limits.max_steps} and no maxEpochs, "
            "so give spec.training.maxSteps instead"
        ]
    return []


def labels_needed(limits: ModelLimits, namespace: str) -> bool:
    """Whether namespace_allowed depends on the namespace's labels: only then are they worth a request."""
    return limits.namespace_selector is not None and namespace not in limits.namespaces


def namespace_allowed(limits: ModelLimits, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether jobs of ``namespace`` (with these labels) may use the model: listed, or matched by the selector.
    Neither given: every namespace may."""
    if not limits.namespaces and limits.namespace_selector is None:
        return True
    if namespace in limits.namespaces:
        return True
    return limits.namespace_selector is not None and selector_matches(limits.namespace_selector, labels)


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every requirement holds (empty: all)."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        holds = {
            "In": present and value in requirement.values,
            "NotIn": not present or value not in requirement.values,
            "Exists": present,
            "DoesNotExist": not present,
        }[requirement.operator]
        if not holds:
            return False
    return True


def _at_revision(entry: FineTuneModel) -> str:
    return f" at revision {entry.spec.revision}" if entry.spec.revision else ""


def _number(value: float) -> str:
    return f"{value:g}"
