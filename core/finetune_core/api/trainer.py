"""The resolved configuration the operator hands to the trainer (a ConfigMap, mounted as JSON).

Everything the trainer needs is decided here, by the operator, once: defaults that depend on other
fields, the storage layout, the identity of the job. The trainer validates it with the same model.
"""

from __future__ import annotations

from pydantic import model_validator

from .base import ApiModel, describe, text
from .finetunejob import Data, Evaluation, Method, ModelSource, Objective, Training
from .rules import Rule, check

CONFIG_FILE_NAME = "config.json"


class JobIdentity(ApiModel):
    namespace: text(63) = describe("Namespace of the FineTuneJob.")
    name: text(253) = describe("Name of the FineTuneJob.")
    uid: text(64) = describe("UID of the FineTuneJob.", default="")


class TrainerOutput(ApiModel):
    checkpoints_uri: text(2048) = describe("Directory of this job's checkpoints (step-<N>/ below it).")
    artifact_uri: text(2048) = describe("Directory of the final artifact; immutable once its manifest exists.")
    adapter_name: text(253) = describe("Name of the ModelAdapter the artifact will be published as.")
    version: text(128) = describe("Version of the artifact (a path segment of artifact_uri).")


class ProgressEndpoint(ApiModel):
    url: text(2048) = describe("HTTPS URL the trainer's rank 0 posts progress reports to.")
    ca_file: text(1024) | None = describe("CA bundle that signs the endpoint's certificate.", default=None)
    token_file: text(1024) = describe("Projected ServiceAccount token sent as a bearer token.")
    min_interval_seconds: float = describe("Fewest seconds between two routine reports.", default=5.0, gt=0)


TRAINER_CONFIG_RULES = [
    Rule(
        cel="has(self.model.uri) && !has(self.model.name)",
        message="model.uri must be resolved (a catalog name replaced by its FineTuneModel's uri) before the trainer "
        "starts",
        holds=lambda c: c.model.uri is not None and c.model.name is None,
    ),
    Rule(
        cel="has(self.training.learningRate)",
        message="training.learningRate must be resolved before the trainer starts",
        holds=lambda c: c.training.learning_rate is not None,
    ),
    Rule(
        cel="has(self.training.epochs) != has(self.training.maxSteps)",
        message="training needs exactly one of epochs and maxSteps once resolved",
        holds=lambda c: (c.training.epochs is None) != (c.training.max_steps is None),
    ),
    Rule(
        cel="self.method.type == 'full' || has(self.method.lora)",
        message="method.lora must be resolved for lora and qlora",
        holds=lambda c: c.method.type == "full" or c.method.lora is not None,
    ),
]


class TrainerConfig(ApiModel):
    """One training run, fully resolved."""

    job: JobIdentity
    model: ModelSource
    method: Method
    objective: Objective
    data: Data
    training: Training
    evaluation: Evaluation
    output: TrainerOutput
    progress: ProgressEndpoint | None = None

    @model_validator(mode="after")
    def _rules(self) -> TrainerConfig:
        return check(TRAINER_CONFIG_RULES, self)
