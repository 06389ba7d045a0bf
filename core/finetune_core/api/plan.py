"""The plan of a run, before any GPU is claimed: what the CPU preflight counts, and what the operator makes of it.

Two models, on either side of a trust boundary:

- :class:`PreflightReport` is what the preflight pod leaves in its termination message. A tenant controls
  that pod (its image, its data), so the operator bounds the message, validates it with this model and
  believes only numbers from it; the one list of strings (the invalid rows' ``file:line``) is checked
  against the job's own data URIs before it is shown (planner.py).
- :class:`Plan` is ``status.plan``: the preflight's counts plus the operator's estimate of time and cost.
"""

from __future__ import annotations

from typing import Literal

from .base import ApiModel, Int64, describe, text

# The kubelet keeps at most 4096 bytes of a termination message; a report is at most this, by construction
# (no free text, at most MAX_PLAN_SOURCES sources and MAX_PREFLIGHT_ORIGINS origins of bounded length).
PREFLIGHT_MESSAGE_LIMIT = 4000
MAX_PLAN_SOURCES = 16  # spec.data.train's own limit
MAX_PREFLIGHT_ORIGINS = 10
MAX_ORIGIN_LENGTH = 300
# file:line of an invalid row, in printable ASCII only: an origin is shown in the job's conditions and Events,
# and a file name (a bucket's keys, a Hub dataset's files: not always the job author's) could otherwise carry
# terminal escapes or bidi overrides into `kubectl describe`. An origin outside it is left to the pod's log.
ORIGIN_PATTERN = r"^[!-~]+:(\d{1,12}|row \d{1,12})$"

EstimateSource = Literal["default", "measured"]


class TokenCounts(ApiModel):
    """Counts of the training mix, the task eval set and the general (forgetting-check) data."""

    train: Int64 = describe("In the training mix of one epoch.", default=0, ge=0)
    eval: Int64 = describe("In the task eval set.", default=0, ge=0)
    general: Int64 = describe("In the general data.", default=0, ge=0)


class SourcePlan(ApiModel):
    """One training source, in the order of spec.data.train."""

    rows: Int64 = describe("Rows read.", default=0, ge=0)
    invalid_rows: Int64 = describe("Rows skipped as invalid.", default=0, ge=0)
    examples: Int64 = describe("Examples it contributes to one epoch's training mix.", default=0, ge=0)
    tokens: Int64 = describe("Tokens it contributes to one epoch's training mix.", default=0, ge=0)


class CacheCounts(ApiModel):
    """What the preflight did with the namespace's shared model cache."""

    hits: int = describe("Models found whole in the cache.", default=0, ge=0, le=1000)
    misses: int = describe("Models downloaded into the cache.", default=0, ge=0, le=1000)
    bytes: Int64 = describe("Bytes downloaded into the cache.", default=0, ge=0)
    evictions: int = describe(
        "Entries evicted (least recently used) to stay under the limit.", default=0, ge=0, le=100000
    )
    refills: int = describe("Corrupted entries found (size or sha256) and downloaded again.", default=0, ge=0, le=1000)


class PreflightPlan(ApiModel):
    """What the preflight counted, with the same code that trains."""

    model_revision: text(255, r"^[A-Za-z0-9._/-]*$") | None = describe(
        "The resolved commit of an hf:// base model.", default=None
    )
    parameters: Int64 | None = describe("Parameters of the base model (from its config).", default=None, ge=0)
    examples: TokenCounts = describe("Examples per set.", default_factory=TokenCounts)
    tokens: TokenCounts = describe("Tokens per set.", default_factory=TokenCounts)
    sources: list[SourcePlan] = describe(
        "Per training source, after mixing.", default_factory=list, max_length=MAX_PLAN_SOURCES
    )
    steps_per_epoch: Int64 = describe("Optimizer steps of the first epoch.", default=0, ge=0)
    total_steps: Int64 = describe("Optimizer steps of the whole run.", default=0, ge=0)
    epochs: float = describe("Passes over the training mix.", default=0.0, ge=0.0, le=1_000_000.0)
    trained_tokens: Int64 = describe("Real tokens over all the run's steps.", default=0, ge=0)
    processes: int = describe("Training processes the plan was made for.", default=1, ge=1, le=65536)
    cache: CacheCounts | None = describe("The shared model cache, when the namespace has one.", default=None)


class PreflightReport(ApiModel):
    """The preflight pod's termination message: a plan, or the ``file:line`` of the rows that stop the run."""

    outcome: Literal["Planned", "DataError"] = describe("Planned, or DataError: the data cannot be trained on.")
    plan: PreflightPlan | None = describe("The plan, when Planned.", default=None)
    origins: list[text(MAX_ORIGIN_LENGTH, ORIGIN_PATTERN)] = describe(
        "file:line of up to ten invalid rows, when DataError.", default_factory=list, max_length=MAX_PREFLIGHT_ORIGINS
    )

    def to_message(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class Estimate(ApiModel):
    """How long training will take and what it costs, from the planned tokens and a throughput figure."""

    seconds: Int64 = describe("Estimated seconds of training (the optimizer steps).", ge=0)
    duration: text(32) = describe("The same for people, for example 1h5m.")
    gpu_hours: float = describe("seconds x GPUs / 3600 (0 for a CPU-only run).", ge=0.0)
    tokens_per_second: float = describe("Real tokens per second of the whole job that the estimate assumes.", gt=0.0)
    source: EstimateSource = describe(
        "default: the throughput table shipped with the operator; measured: the median of this cluster's "
        "finished jobs of the same kind."
    )
    key: text(253) = describe("The throughput table's row: accelerator/parameters/method/sequence length.")
    samples: int = describe("Finished jobs the measured figure is the median of.", default=0, ge=0, le=1000)


class Plan(ApiModel):
    """status.plan: the preflight's counts and the estimate."""

    model_revision: text(255) | None = describe("The resolved commit of an hf:// base model.", default=None)
    parameters: Int64 | None = describe("Parameters of the base model.", default=None, ge=0)
    examples: TokenCounts = describe("Examples per set.", default_factory=TokenCounts)
    tokens: TokenCounts = describe("Tokens per set.", default_factory=TokenCounts)
    steps_per_epoch: Int64 = describe("Optimizer steps of the first epoch.", default=0, ge=0)
    steps: Int64 = describe("Optimizer steps of the whole run.", default=0, ge=0)
    epochs: float = describe("Passes over the training mix.", default=0.0, ge=0.0)
    trained_tokens: Int64 = describe("Real tokens over all the run's steps.", default=0, ge=0)
    estimate: Estimate | None = describe("Time and cost of training.", default=None)
    cache: CacheCounts | None = describe(
        "What the preflight did with the namespace's shared model cache (absent without one).", default=None
    )
    actual_seconds: float | None = describe(
        "Seconds the training's optimizer steps took, once it finished (what the estimate is judged against).",
        default=None,
        ge=0.0,
    )
