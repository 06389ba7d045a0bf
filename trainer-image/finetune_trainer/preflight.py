"""The CPU preflight: everything a run finds out about its data before a GPU is claimed.

``python -m finetune_trainer preflight --config … --processes N --accelerator gpu|cpu`` resolves the model
revision, loads the tokenizer (not the weights), reads, validates and tokenizes every data row with the
training's own pipeline (load_data, into the token store the training then finds), mixes, and plans
every epoch with the batching that training uses, for the layout the training pods will have (their
process count, their device). Its result goes to the termination message as a PreflightReport (JSON):
the plan, or, for data that cannot be trained on, the ``file:line`` of the invalid rows (exit 65).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from finetune_core.api import (
    PREFLIGHT_MESSAGE_LIMIT,
    CacheCounts,
    PreflightPlan,
    PreflightReport,
    SourcePlan,
    TokenCounts,
    TrainerConfig,
)
from finetune_core.api.plan import MAX_ORIGIN_LENGTH, MAX_PREFLIGHT_ORIGINS, ORIGIN_PATTERN

from . import log
from .batching import EpochPlan, epoch_planner
from .cached_models import cache_stats, fetch_model_shared, shared_cache
from .config import load_config
from .data import DataBundle, load_data
from .data.store_cache import token_store_root
from .data.views import measure
from .errors import DataError
from .layout import choose_layout
from .loop import PlanForEpoch, total_steps_for
from .model import attention_implementation, load_tokenizer, placement_for
from .storage import FetchedModel, fetch_model, hf_snapshot, parse_uri, resolve_data
from .termination import write_termination_message

# What AutoTokenizer and AutoConfig read: no weights (a Hub model's tokenizer is megabytes, its weights gigabytes).
TOKENIZER_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]
ORIGIN = re.compile(ORIGIN_PATTERN)


@dataclass(frozen=True)
class TrainingTopology:
    """What the training pods will be: the plan's steps depend on it (micro-batch size, ranks)."""

    processes: int
    on_gpu: bool


def preflight(config_path: Path, topology: TrainingTopology) -> PreflightPlan:
    """Validate and count the run of ``config_path``; raises DataError or ConfigError as training would."""
    config = load_config(config_path).config
    fetched = fetch_tokenizer(config.model.uri, config.model.revision)
    tokenizer = load_tokenizer(fetched.path)
    bundle = load_data(config, tokenizer, resolve_data, store_root=token_store_root())
    if not bundle.train:
        raise DataError("spec.data.train: no usable training rows: check the files and their format")
    plan = plan_of(config, bundle, topology)
    plan.model_revision = fetched.revision
    plan.parameters = parameter_count(fetched.path)
    stats = cache_stats()
    if stats is not None:
        plan.cache = CacheCounts(**stats.to_dict())
    return plan


def fetch_tokenizer(uri: str, revision: str | None) -> FetchedModel:
    """The base model's directory with at least its tokenizer and config, and its resolved revision.

    With the namespace's shared cache mounted, the whole model: the preflight fills the cache on CPU, once
    for every job of the namespace, and the training pods read it from there."""
    if shared_cache() is not None:
        return fetch_model_shared(uri, revision)
    parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        repo_id = f"{parsed.authority}/{parsed.path}" if parsed.path else parsed.authority
        path, commit = hf_snapshot(
            repo_id, revision or "main", repo_type="model", uri=uri, allow_patterns=TOKENIZER_FILES
        )
        return FetchedModel(path=path, revision=commit)
    # A claim is read in place; an S3 prefix is mirrored whole into this pod's cache (the store lists no
    # tokenizer files apart from the weights cheaply enough to be worth a second path).
    return fetch_model(uri, revision)


def plan_of(config: TrainerConfig, bundle: DataBundle, topology: TrainingTopology) -> PreflightPlan:
    """Counts and steps of the run over ``bundle``, for the training pods' layout."""
    training = config.training
    layout = choose_layout(
        training,
        _training_attention(config, topology),
        on_gpu=topology.on_gpu,
        world_size=topology.processes,
        pairs=config.objective == "dpo",
    )
    plan_for_epoch = epoch_planner(
        bundle,
        micro_batch_tokens=layout.micro_batch_tokens,
        batch_tokens=training.batch_tokens,
        packing=layout.packing,
        seed=training.seed,
        world_size=topology.processes,
    )
    first_epoch = plan_for_epoch(0)
    total_steps = total_steps_for(plan_for_epoch, training.epochs, training.max_steps)
    epochs = training.epochs if training.max_steps is None else training.max_steps / max(1, len(first_epoch))
    return PreflightPlan(
        examples=TokenCounts(train=len(bundle.train), eval=len(bundle.eval), general=len(bundle.general)),
        tokens=TokenCounts(train=_tokens(bundle.train), eval=_tokens(bundle.eval), general=_tokens(bundle.general)),
        sources=source_plans(bundle),
        steps_per_epoch=len(first_epoch),
        total_steps=total_steps,
        epochs=round(float(epochs or 0.0), 4),
        trained_tokens=planned_tokens(plan_for_epoch, total_steps, first_epoch),
        processes=topology.processes,
    )


def _training_attention(config: TrainerConfig, topology: TrainingTopology) -> str:
    """The attention the training pods will choose, by their own rule, decided without a GPU (naming a
    device asks nothing of it): the same image, so flash_attn is installed there exactly when it is here."""
    device = torch.device("cuda" if topology.on_gpu else "cpu")
    return attention_implementation(placement_for(config.training, device))


def planned_tokens(plan_for_epoch: PlanForEpoch, total_steps: int, first_epoch: EpochPlan) -> int:
    """Real tokens over the run's first ``total_steps`` steps, epoch after epoch as the loop takes them."""
    tokens, steps, epoch, plan = 0, 0, 0, first_epoch
    while steps < total_steps and len(plan):
        taken = plan.real_tokens[: total_steps - steps]
        tokens += int(taken.sum())
        steps += len(taken)
        epoch += 1
        plan = plan_for_epoch(epoch, ())
    return tokens


def source_plans(bundle: DataBundle) -> list[SourcePlan]:
    """Per training source: its rows, and the examples and tokens it puts into epoch 0's mix."""
    positions = np.asarray(bundle.epoch_mix(0), dtype=np.int64)
    ends = np.cumsum([len(source.examples) for source in bundle.sources], dtype=np.int64)
    owner = np.searchsorted(ends, positions, side="right")
    tokens = bundle.pool.measure_arrays()[0][positions] if len(positions) else np.zeros(0, dtype=np.int64)
    return [
        SourcePlan(
            rows=stats.rows,
            invalid_rows=stats.invalid_rows,
            examples=int((owner == index).sum()),
            tokens=int(tokens[owner == index].sum()),
        )
        for index, stats in enumerate(bundle.train_stats)
    ]


def _tokens(examples: Sequence[Any]) -> int:
    return int(measure(examples).tokens.sum()) if len(examples) else 0


def parameter_count(model_path: Path) -> int | None:
    """Parameters of the model its config describes, counted on the meta device: no weights read or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        model_config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
    except (OSError, ValueError) as error:
        log.info("parameters_unknown", reason=f"{type(error).__name__}: {error}"[:300])
        return None
    return sum(parameter.numel() for parameter in model.parameters())


def report_plan(plan: PreflightPlan) -> None:
    write_termination_message(_bounded(PreflightReport(outcome="Planned", plan=plan)))


def report_data_error(error: DataError) -> None:
    """The invalid rows' ``file:line`` only: the operator shows those, the reasons are in this pod's log."""
    origins = [o for o in error.origins if len(o) <= MAX_ORIGIN_LENGTH and ORIGIN.match(o)]
    write_termination_message(_bounded(PreflightReport(outcome="DataError", origins=origins[:MAX_PREFLIGHT_ORIGINS])))


def _bounded(report: PreflightReport) -> str:
    message = report.to_message()
    while len(message.encode()) > PREFLIGHT_MESSAGE_LIMIT and report.origins:
        report.origins.pop()
        message = report.to_message()
    return message
