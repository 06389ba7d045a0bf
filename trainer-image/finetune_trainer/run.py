"""One training run, start to end: the only place that knows every part of the trainer.

configuration -> processes -> model and data -> plan -> resume -> train -> evaluate -> publish.
Errors a user can cause surface as ConfigError or DataError (exit 78 or 65), a stop request as
Preempted (exit 75) once the checkpoint is safe.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from finetune_operator.api import (
    REPORT_FILE_NAME,
    ArtifactReport,
    CheckpointFallback,
    EvaluationSummary,
    ProgressReport,
    SourceStatistics,
    TrainerConfig,
    TrainingReport,
)

from . import log
from .artifact import ArtifactTarget, is_same_job, publish, write_model_files
from .batching import epoch_planner
from .cached_models import fetch_model_shared
from .checkpoint import Checkpointer
from .config import LoadedConfig, load_config
from .data import DataBundle, load_data
from .data.store_cache import token_store_root
from .distributed import Distributed, make_accelerator
from .errors import ConfigError, DataError, GateFailed, Preempted
from .evaluate import EvalSet, Evaluator, SetScores
from .layout import BatchLayout, choose_layout
from .loop import TrainingRun, save_checkpoint, total_steps_for, train
from .metrics_server import metrics_hooks
from .model import (
    Placement,
    TrainableModel,
    attention_implementation,
    check_method_supported,
    frozen_reference,
    load_tokenizer,
    load_trainable_model,
    placement_for,
)
from .objectives import DirectPreference, LanguageModelling
from .optim import build_optimizer, build_scheduler
from .progress_push import progress_hooks
from .report import CompositeHooks, JsonLogHooks, MetricsFileHooks, TrainingHooks
from .signals import StopRequest
from .state import TrainState, capture_rng, restore_rng
from .storage import FetchedModel, open_location, resolve_data, scratch_dir
from .termination import write_final_summary


def run(config_path: Path, hooks: list[TrainingHooks] | None = None) -> TrainingReport | None:
    """Train, evaluate and publish as ``config_path`` says; returns the report (None when already published)."""
    started = time.monotonic()
    with StopRequest.installed() as stop:
        loaded = load_config(config_path)
        session = _set_up(loaded, hooks or [], stop)
        if session is None:
            published = _published_report(loaded)
            write_final_summary(published)
            _enforce_gate(published)
            return None
        state = _train(session)
        summary = _evaluate(session, state)
        report = _publish(session, state, summary)
    log.info("run_finished", seconds=round(time.monotonic() - started, 3))
    _enforce_gate(report)
    return report


def _published_report(loaded: LoadedConfig) -> TrainingReport | None:
    """The report of the artifact a previous attempt published, with the artifact it describes."""
    target = ArtifactTarget.of(loaded.config.output.artifact_uri)
    existing = target.published()
    if existing is None or existing[1] is None:
        return None
    manifest, report = existing
    artifact = ArtifactReport(uri=target.uri, digest=manifest.digest, size_bytes=manifest.size_bytes)
    return report.model_copy(update={"artifact": artifact})


def _enforce_gate(report: TrainingReport | None) -> None:
    """An enforced gate that failed ends the run with its own exit code: the operator publishes nothing.

    Checked after the artifact is stored, so people can inspect what was refused, and again on a retry
    that finds the artifact already stored, so a retry never turns a refusal into a success.
    """
    evaluation = report.evaluation if report is not None else None
    if evaluation is not None and evaluation.gate == "Failed":
        raise GateFailed(f"evaluation gate failed: {evaluation.message}")


@dataclass
class _Session:
    """Everything one run assembles before its first step."""

    loaded: LoadedConfig
    dist: Distributed
    placement: Placement
    target: ArtifactTarget
    fetched: FetchedModel
    tokenizer: Any
    bundle: DataBundle
    layout: BatchLayout
    trainable: TrainableModel
    evaluator: Evaluator
    checkpointer: Checkpointer
    hooks: CompositeHooks
    metrics_file: Path
    training: TrainingRun
    state: TrainState
    stop: StopRequest
    checkpoint_fallback: CheckpointFallback | None  # told to the operator with the first report

    @property
    def config(self) -> TrainerConfig:
        return self.loaded.config


def _set_up(loaded: LoadedConfig, extra_hooks: list[TrainingHooks], stop: StopRequest) -> _Session | None:
    """Processes, model, data, plan and the state to start from; None when the artifact already exists."""
    config = loaded.config
    accelerator = make_accelerator(config)
    dist = Distributed(accelerator)
    log.route_transformers_logging()
    placement = placement_for(config.training, dist.device, fsdp_shards=dist.world_size if dist.fsdp else 1)
    check_method_supported(config.method, placement)  # before any download: QLoRA on CPU fails fast
    target = ArtifactTarget.of(config.output.artifact_uri)
    if _already_published(target, loaded):
        return None

    with accelerator.local_main_process_first():  # one download per node; the others find it cached
        fetched = fetch_model_shared(config.model.uri, config.model.revision)
        tokenizer = load_tokenizer(fetched.path)
        bundle = load_data(config, tokenizer, resolve_data, store_root=token_store_root())
    if not bundle.train:
        raise DataError("spec.data.train: no usable training rows: check the files and their format")

    dpo = config.objective == "dpo"
    layout = choose_layout(
        config.training,
        attention_implementation(placement),
        on_gpu=placement.on_gpu,
        world_size=dist.world_size,
        pairs=dpo,
    )
    _seed_everything(config.training.seed)  # the adapter's initialisation: the same on every rank and attempt
    trainable = load_trainable_model(
        fetched.path, config.method, config.training, placement, micro_batch_tokens=layout.micro_batch_tokens
    )
    reference = None
    if dpo and not trainable.is_adapter:
        reference = accelerator.prepare_model(frozen_reference(trainable.model, placement), evaluation_mode=True)
    objective = DirectPreference(config.training.dpo.beta, reference) if dpo else LanguageModelling()

    plan_for_epoch = epoch_planner(
        bundle,
        micro_batch_tokens=layout.micro_batch_tokens,
        batch_tokens=config.training.batch_tokens,
        packing=layout.packing,
        seed=config.training.seed,
        world_size=dist.world_size,
    )

    total_steps = total_steps_for(plan_for_epoch, config.training.epochs, config.training.max_steps)
    optimizer = build_optimizer(trainable.model, config.training)
    scheduler = build_scheduler(optimizer, config.training, total_steps)
    model, optimizer = accelerator.prepare(trainable.model, optimizer)

    evaluator = Evaluator(
        dist,
        task=EvalSet("task", bundle.eval, objective),
        general=EvalSet("general", bundle.general, LanguageModelling()),
        pad_token_id=tokenizer.pad_token_id,
        flat_batches=layout.flat,
        batch_tokens=layout.micro_batch_tokens,
        metrics=config.evaluation.metrics,
        tokenizer=tokenizer,
    )
    metrics_file = scratch_dir() / f"{config.job.namespace}-{config.job.name}" / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    hooks = CompositeHooks(
        [
            JsonLogHooks(every_steps=max(1, total_steps // 100)),
            MetricsFileHooks(metrics_file),
            *metrics_hooks(),
            *progress_hooks(config.progress),
            *extra_hooks,
        ]
        if dist.is_main
        else []
    )
    checkpointer = Checkpointer(
        open_location(config.output.checkpoints_uri), config.training.keep_checkpoints, dist, loaded.sha256
    )
    training = TrainingRun(
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        examples=bundle.pool,
        plan_for_epoch=plan_for_epoch,
        total_steps=total_steps,
        packing=layout.packing,
        pad_token_id=tokenizer.pad_token_id,
        flat_batches=layout.flat,
        max_grad_norm=config.training.max_grad_norm,
        hooks=hooks,
        stop=stop,
        checkpointer=checkpointer,
        checkpoint_every=config.training.checkpoint_every_steps,
        metrics_file=metrics_file,
        evaluate_every=config.evaluation.every_steps,
        periodic_eval=evaluator.periodic if bundle.eval else None,
    )

    resumed = checkpointer.resume(model, optimizer, scheduler, metrics_file)
    state, rng = resumed.state, resumed.rng
    plan_layout = {
        "world_size": dist.world_size,
        "micro_batch_tokens": layout.micro_batch_tokens,
        "packing": layout.packing,
    }
    if state.adopt_layout(plan_layout):
        # Resumed with other resources: the rest of the epoch is planned from the examples it has not seen,
        # and the schedule runs to the run's new length from where it was.
        resumed_total = total_steps_for(
            plan_for_epoch, config.training.epochs, config.training.max_steps, state.epoch, state.epoch_segments
        )
        log.info("replanned", epoch=state.epoch, earlier=state.epoch_segments, total_steps=resumed_total)
        if resumed_total != total_steps:
            training.total_steps = total_steps = resumed_total
            training.scheduler = scheduler = _rescheduled(optimizer, config.training, total_steps, scheduler)
    if not trainable.is_adapter and state.base_losses is None:
        # Full fine-tuning changes the base itself: score it now, while it still is the base.
        state.base_losses = {name: s.to_json() for name, s in evaluator.scores(model).items()}
    # Last, after everything that draws random numbers: dropout continues where the checkpoint left it.
    if rng is not None:
        restore_rng(rng)
    else:
        _seed_everything(config.training.seed + dist.rank)
    log.info(
        "plan",
        total_steps=total_steps,
        train_examples=len(bundle.train),
        eval_examples=len(bundle.eval),
        general_examples=len(bundle.general),
        packing=layout.packing,
        micro_batch_tokens=layout.micro_batch_tokens,
        processes=dist.world_size,
        resumed_from_step=state.resumed_from_step,
    )
    return _Session(
        loaded=loaded,
        dist=dist,
        placement=placement,
        target=target,
        fetched=fetched,
        tokenizer=tokenizer,
        bundle=bundle,
        layout=layout,
        trainable=trainable,
        evaluator=evaluator,
        checkpointer=checkpointer,
        hooks=hooks,
        metrics_file=metrics_file,
        training=training,
        state=state,
        stop=stop,
        checkpoint_fallback=resumed.fallback,
    )


def _train(session: _Session) -> TrainState:
    if session.dist.any(session.stop.requested):
        raise Preempted(f"stopped by {session.stop.signal_name or 'a stop request'} before training started")
    if session.dist.is_main:
        session.hooks.on_stage(
            ProgressReport(
                stage="starting",
                step=session.state.step,
                total_steps=session.training.total_steps,
                resumed_from_step=session.state.resumed_from_step,
                checkpoint_fallback=session.checkpoint_fallback,
                model_revision=session.fetched.revision,
            )
        )
    state = train(session.training, session.state)
    latest = session.checkpointer.latest()
    if latest is None or latest.step < state.step:
        # Evaluation and upload can be preempted too: a retry then starts from here, not from scratch.
        save_checkpoint(session.training, state, capture_rng())
    return state


def _stop_if_requested(session: _Session, where: str) -> None:
    """A long evaluation can outlast the grace period: stop between its phases (the last step is checkpointed)."""
    if session.dist.any(session.stop.requested):
        raise Preempted(f"stopped by {session.stop.signal_name or 'a stop request'} {where}; checkpoint saved")


def _evaluate(session: _Session, state: TrainState) -> EvaluationSummary:
    """Base against adapted on every eval set, and the gate's verdict."""
    evaluator, model = session.evaluator, session.training.model
    _stage(session, "evaluating", state)
    adapted = evaluator.scores(model)
    if session.trainable.is_adapter:
        _stop_if_requested(session, "between the adapted and the base model's evaluation")
        base = evaluator.scores(model, base=True)
    else:
        base = {name: SetScores.from_json(scores) for name, scores in (state.base_losses or {}).items()}
    summary = evaluator.summary(session.config.evaluation.gate, base, adapted)
    if session.dist.is_main:
        session.hooks.on_evaluation(summary)
    return summary


def _publish(session: _Session, state: TrainState, summary: EvaluationSummary) -> TrainingReport:
    """The artifact and its report, written last; the report also goes next to the checkpoints."""
    dist, config = session.dist, session.config
    _stop_if_requested(session, "after the evaluation, before the upload")
    evaluated = time.monotonic()
    report = TrainingReport(
        job={"namespace": config.job.namespace, "name": config.job.name, "uid": config.job.uid},
        config_sha256=session.loaded.sha256,
        model_revision=session.fetched.revision,
        data=[SourceStatistics(**asdict(stats)) for stats in session.bundle.train_stats],
        steps=state.step,
        tokens_seen=state.tokens_seen,
        wall_seconds=state.wall_seconds,
        train_seconds=round(state.wall_seconds, 3),
        resumed_from_step=state.resumed_from_step,
        final_train_loss=state.last_loss if state.last_loss is not None and math.isfinite(state.last_loss) else None,
        evaluation=summary,
        versions=_versions(),
        device=_device_facts(session),
    )
    _stage(session, "uploading", state)
    model = session.training.model
    full_state = dist.accelerator.get_state_dict(model) if dist.fsdp else None  # a collective under FSDP
    if dist.is_main:
        staging = session.target.staging()
        write_model_files(
            staging,
            model,
            session.tokenizer,
            is_adapter=session.trainable.is_adapter,
            model_uri=config.model.uri,
            revision=session.fetched.revision,
            dtype=session.placement.compute_dtype,
            state_dict=full_state,
        )
        if session.metrics_file.is_file():
            (staging / "metrics.jsonl").write_bytes(session.metrics_file.read_bytes())
        report.artifact = publish(session.target, staging, report)
        report.wall_seconds += time.monotonic() - evaluated
        session.checkpointer.location.write_bytes(REPORT_FILE_NAME, report.model_dump_json(indent=2).encode())
        session.hooks.on_end(report)
        write_final_summary(report)
    dist.barrier()
    return report


def _stage(session: _Session, stage: str, state: TrainState) -> None:
    if session.dist.is_main:
        session.hooks.on_stage(ProgressReport(stage=stage, step=state.step, total_steps=session.training.total_steps))


def _already_published(target: ArtifactTarget, loaded: LoadedConfig) -> bool:
    existing = target.published()
    if existing is None:
        return False
    manifest, report = existing
    if is_same_job(report, loaded.config.job.uid, loaded.sha256):
        # A retry after the upload completed (the pod died before it could exit): the work is done.
        log.info("artifact_already_published", uri=target.uri, digest=manifest.digest)
        return True
    raise ConfigError(
        f"output.artifactUri {target.uri} already holds an artifact of another job ({manifest.digest}): "
        "artifacts are immutable, publish under a new version"
    )


def _rescheduled(optimizer, training, total_steps: int, restored):
    """A schedule over ``total_steps`` that continues from ``restored``'s position and learning rate."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # the one the first schedule was built on, unprepared
    scheduler = build_scheduler(optimizer, training, total_steps)
    scheduler.load_state_dict(restored.state_dict())
    for group, rate in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = rate  # as the restored schedule left it: the constructor reset it
    return scheduler


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("finetune-operator", "torch", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _device_facts(session: _Session) -> dict[str, Any]:
    dist, layout, trainable = session.dist, session.layout, session.trainable
    facts = {
        "type": dist.device.type,
        "processes": dist.world_size,
        "precision": str(session.placement.compute_dtype).removeprefix("torch."),
        "attention": trainable.attn_implementation,
        "gradient_checkpointing": trainable.gradient_checkpointing,
        "packing": layout.packing,
        "micro_batch_tokens": layout.micro_batch_tokens,
        "fsdp": dist.fsdp,
    }
    if dist.device.type == "cuda":
        facts["name"] = torch.cuda.get_device_name(dist.device)
    return facts
