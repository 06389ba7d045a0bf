"""What the operator would refuse about a job, refused at once with OpenAI's errors: the same pure checks
(the FineTuneJob model, the catalog's ``resolve``) before the FineTuneJob is created, so that an SDK caller
gets a 4xx naming the limit instead of a job that fails later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_core.api import FineTuneJob, FineTuneModel, format_validation_error
from pydantic import ValidationError

from .. import catalog
from .errors import ApiError, invalid
from .jobs import DEFAULT_MAX_SEQ_LENGTH, ModelHints

# spec fields a refusal of the catalog names, and the OpenAI parameter that set them
PARAMS = {"spec.training.epochs": "n_epochs", "spec.training.batchTokens": "batch_size", "spec.method": "model"}


def model_not_found() -> ApiError:
    return ApiError(
        404,
        "The model does not exist or your project may not use it: list the models you may use with GET /v1/models",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def catalog_entry(found: Mapping[str, Any] | None) -> FineTuneModel | None:
    """A FineTuneModel as read; None when absent or not one the operator would accept either."""
    if found is None:
        return None
    try:
        return FineTuneModel.model_validate(found)
    except ValidationError:
        return None


def usable(entry: FineTuneModel | None, namespace: str, labels: Mapping[str, str]) -> bool:
    return entry is not None and catalog.namespace_allowed(entry.spec.limits, namespace, labels)


def hints(entry: FineTuneModel) -> ModelHints:
    defaults = entry.spec.defaults
    return ModelHints(
        method_type=defaults.method.type if defaults.method else "lora",
        max_seq_length=defaults.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
    )


def check_job(manifest: dict[str, Any], entry: FineTuneModel, namespace: str, labels: Mapping[str, str]) -> None:
    """Nothing when the operator would run the job; ApiError naming the rule or the catalog limit otherwise."""
    try:
        job = FineTuneJob.model_validate(manifest)
    except ValidationError as error:
        raise invalid(f"The job would be invalid: {'; '.join(format_validation_error(error))[:1024]}") from None
    verdict = catalog.resolve(job.spec, entry, namespace, labels)
    if isinstance(verdict, catalog.Refused):
        if verdict.reason in (catalog.MODEL_NOT_FOUND, catalog.NAMESPACE_NOT_ALLOWED):
            raise model_not_found()
        param = next((p for field, p in PARAMS.items() if verdict.message.startswith(field)), None)
        raise invalid(verdict.message, param, "model_limit_exceeded")
