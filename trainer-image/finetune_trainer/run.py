"""One training run, start to end: the only place that knows every part of the trainer.

configuration -> processes and device -> data and its plan -> model -> optimizer -> reporting ->
the checkpoint to resume from (the set-up, as torchtune's recipes read) -> train -> evaluate -> publish.
Errors a user can cause surface as ConfigError or DataError (exit 78 or 65), a stop request as
Preempted (exit 75) once the checkpoint is safe.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from finetune_core.api import (
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
from .loop import PlanForEpoch, TrainingRun, save_checkpoint, total_steps_for, train
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
    skip_unused_quantization,
)
from .objectives import DirectPreference, LanguageModelling, Objective
from .optim import build_optimizer, build_scheduler
from .progress_push import progress_hooks
from .report import CompositeHooks, JsonLogHooks, MetricsFileHooks, TrainingHooks
from .signals import StopRequest
from .state import TrainState, capture_rng, restore_rng
from .storage import FetchedModel, open_location, resolve_data, scratch_dir
from .termination import write_final_summary


def run(
    config_path: Path, hooks: list[TrainingHooks] | None = None, *, own_process: bool = False
) -> TrainingReport | None:
    """Train, evaluate and publish as ``config_path`` says; returns the report (None when already published).

    ``own_process``: the process exists for this run alone (see __main__.main).
    """
    started = time.monotonic()
    with StopRequest.installed() as stop:
        loaded = load_config(config_path)
        if own_process:
            skip_unused_quantization(loaded.config.method)
        recipe = _Recipe(loaded, hooks or [], stop)
        if not recipe.setup():
            published = _published_report(loaded)
            write_final_summary(published)
            _enforce_gate(published)
            return None
        state = recipe.train()
        summary = recipe.evaluate(state)
        report = recipe.publish(state, summary)
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


class _Recipe:
    """One run's components, set up in order by :meth:`setup`, then :meth:`train`, :meth:`evaluate`, :meth:`publish`.

    The set-up reads like the run: the processes and the device, the data, the model, the optimizer,
    the reporting, then the checkpoint to start from. Its order is part of the result: the adapter's
    initialisation draws random numbers right after the model's seed, and the random state a
    checkpoint saved is restored after everything else has drawn, so that dropout continues exactly.
    """

    # What each step sets up, in order.
    dist: Distributed  # _setup_device; its accelerator is the run's
    placement: Placement
    layout: BatchLayout
    target: ArtifactTarget  # setup
    fetched: FetchedModel  # _setup_data
    tokenizer: Any
    bundle: DataBundle
    plan_for_epoch: PlanForEpoch
    total_steps: int  # replanned by _setup_checkpointing when resumed with other resources
    trainable: TrainableModel  # _setup_model
    objective: Objective
    model: torch.nn.Module  # _setup_optimizer: the trainable model, prepared by Accelerate
    optimizer: torch.optim.Optimizer
    scheduler: Any
    evaluator: Evaluator  # _setup_reporting
    metrics_file: Path
    hooks: CompositeHooks
    checkpointer: Checkpointer  # _setup_checkpointing
    state: TrainState
    checkpoint_fallback: CheckpointFallback | None  # told to the operator with the first report

    def __init__(self, loaded: LoadedConfig, extra_hooks: list[TrainingHooks], stop: StopRequest) -> None:
        self.loaded = loaded
        self.config: TrainerConfig = loaded.config
        self.extra_hooks = extra_hooks
        self.stop = stop

    @property
    def dpo(self) -> bool:
        return self.config.objective == "dpo"

    def setup(self) -> bool:
        """Everything before the first step; False when this job's artifact is already published."""
        self._setup_device()
        self.target = ArtifactTarget.of(self.config.output.artifact_uri)
        if _already_published(self.target, self.loaded):
            return False
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self._setup_reporting()
        self._setup_checkpointing()
        log.info(
            "plan",
            total_steps=self.total_steps,
            train_examples=len(self.bundle.train),
            eval_examples=len(self.bundle.eval),
            general_examples=len(self.bundle.general),
            packing=self.layout.packing,
            micro_batch_tokens=self.layout.micro_batch_tokens,
            processes=self.dist.world_size,
            resumed_from_step=self.state.resumed_from_step,
        )
        return True

    def _setup_device(self) -> None:
        """The processes, where the model runs and in which precision, and how micro-batches are laid out."""
        config = self.config
        self.dist = dist = Distributed(make_accelerator(config))
        log.route_transformers_logging()
        self.placement = placement_for(config.training, dist.device, fsdp_shards=dist.world_size if dist.fsdp else 1)
        check_method_supported(config.method, self.placement)  # before any download: QLoRA on CPU fails fast
        self.layout = choose_layout(
            config.training,
            attention_implementation(self.placement),
            on_gpu=self.placement.on_gpu,
            world_size=dist.world_size,
            pairs=self.dpo,
        )

    def _setup_data(self) -> None:
        """The base model's files and tokenizer, the data tokenized with it, and the plan of every epoch."""
        config, layout = self.config, self.layout
        with self.dist.accelerator.local_main_process_first():  # one download per node; the others find it cached
            self.fetched = fetch_model_shared(config.model.uri, config.model.revision)
            self.tokenizer = load_tokenizer(self.fetched.path)
            self.bundle = load_data(config, self.tokenizer, resolve_data, store_root=token_store_root())
        if not self.bundle.train:
            raise DataError("spec.data.train: no usable training rows: check the files and their format")
        self.plan_for_epoch = epoch_planner(
            self.bundle,
            micro_batch_tokens=layout.micro_batch_tokens,
            batch_tokens=config.training.batch_tokens,
            packing=layout.packing,
            seed=config.training.seed,
            world_size=self.dist.world_size,
        )
        self.total_steps = total_steps_for(self.plan_for_epoch, config.training.epochs, config.training.max_steps)
        # The first epoch's plan now, before the model: its temporaries, and loading's, are given back (heap.py)
        # before the model's and training's memory is taken, instead of adding to it. The planner keeps it for the
        # loop of a run that starts at the beginning; a resumed one plans its own position there.
        self.plan_for_epoch(0)

    def _setup_model(self) -> None:
        """The trainable model (with its adapter) and the objective, with DPO's frozen reference if it needs one."""
        config = self.config
        _seed_everything(config.training.seed)  # the adapter's initialisation: the same on every rank and attempt
        self.trainable = load_trainable_model(
            self.fetched.path,
            config.method,
            config.training,
            self.placement,
            micro_batch_tokens=self.layout.micro_batch_tokens,
        )
        reference = None
        if self.dpo and not self.trainable.is_adapter:
            reference = self.dist.accelerator.prepare_model(
                frozen_reference(self.trainable.model, self.placement), evaluation_mode=True
            )
        self.objective = DirectPreference(config.training.dpo.beta, reference) if self.dpo else LanguageModelling()

    def _setup_optimizer(self) -> None:
        """AdamW and its schedule over the run's steps; the model and optimizer prepared for the processes."""
        training = self.config.training
        optimizer = build_optimizer(self.trainable.model, training)
        self.scheduler = build_scheduler(optimizer, training, self.total_steps)
        self.model, self.optimizer = self.dist.accelerator.prepare(self.trainable.model, optimizer)

    def _setup_reporting(self) -> None:
        """The evaluator, the metrics file and the hooks that report progress (on the main process only)."""
        config, dist = self.config, self.dist
        self.evaluator = Evaluator(
            dist,
            task=EvalSet("task", self.bundle.eval, self.objective),
            general=EvalSet("general", self.bundle.general, LanguageModelling()),
            pad_token_id=self.tokenizer.pad_token_id,
            flat_batches=self.layout.flat,
            batch_tokens=self.layout.micro_batch_tokens,
            metrics=config.evaluation.metrics,
            tokenizer=self.tokenizer,
        )
        self.metrics_file = scratch_dir() / f"{config.job.namespace}-{config.job.name}" / "metrics.jsonl"
        self.metrics_file.unlink(missing_ok=True)
        self.hooks = CompositeHooks(
            [
                JsonLogHooks(every_steps=max(1, self.total_steps // 100)),
                MetricsFileHooks(self.metrics_file),
                *metrics_hooks(),
                *progress_hooks(config.progress),
                *self.extra_hooks,
            ]
            if dist.is_main
            else []
        )

    def _setup_checkpointing(self) -> None:
        """The checkpointer and the state to start from: the newest usable checkpoint's, or a fresh one."""
        config, dist, training = self.config, self.dist, self.config.training
        self.checkpointer = Checkpointer(
            open_location(config.output.checkpoints_uri), training.keep_checkpoints, dist, self.loaded.sha256
        )
        resumed = self.checkpointer.resume(self.model, self.optimizer, self.scheduler, self.metrics_file)
        self.state, self.checkpoint_fallback = resumed.state, resumed.fallback
        plan_layout = {
            "world_size": dist.world_size,
            "micro_batch_tokens": self.layout.micro_batch_tokens,
            "packing": self.layout.packing,
        }
        if self.state.adopt_layout(plan_layout):
            # Resumed with other resources: the rest of the epoch is planned from the examples it has not seen,
            # and the schedule runs to the run's new length from where it was.
            resumed_total = total_steps_for(
                self.plan_for_epoch, training.epochs, training.max_steps, self.state.epoch, self.state.epoch_segments
            )
            log.info("replanned", epoch=self.state.epoch, earlier=self.state.epoch_segments, total_steps=resumed_total)
            if resumed_total != self.total_steps:
                self.total_steps = resumed_total
                self.scheduler = _rescheduled(self.optimizer, training, resumed_total, self.scheduler)
        if not self.trainable.is_adapter and self.state.base_losses is None:
            # Full fine-tuning changes the base itself: score it now, while it still is the base.
            self.state.base_losses = {name: s.to_json() for name, s in self.evaluator.scores(self.model).items()}
        # Last, after everything that draws random numbers: dropout continues where the checkpoint left it.
        if resumed.rng is not None:
            restore_rng(resumed.rng)
        else:
            _seed_everything(training.seed + dist.rank)

    def train(self) -> TrainState:
        """The optimizer steps from the state set up to the end of the run, then a checkpoint of the last one."""
        config = self.config
        if self.dist.any(self.stop.requested):
            raise Preempted(f"stopped by {self.stop.signal_name or 'a stop request'} before training started")
        if self.dist.is_main:
            self.hooks.on_stage(
                ProgressReport(
                    stage="starting",
                    step=self.state.step,
                    total_steps=self.total_steps,
                    resumed_from_step=self.state.resumed_from_step,
                    checkpoint_fallback=self.checkpoint_fallback,
                    model_revision=self.fetched.revision,
                )
            )
        training = TrainingRun(
            dist=self.dist,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            objective=self.objective,
            examples=self.bundle.pool,
            plan_for_epoch=self.plan_for_epoch,
            total_steps=self.total_steps,
            packing=self.layout.packing,
            pad_token_id=self.tokenizer.pad_token_id,
            flat_batches=self.layout.flat,
            max_grad_norm=config.training.max_grad_norm,
            hooks=self.hooks,
            stop=self.stop,
            checkpointer=self.checkpointer,
            checkpoint_every=config.training.checkpoint_every_steps,
            metrics_file=self.metrics_file,
            evaluate_every=config.evaluation.every_steps,
            periodic_eval=self.evaluator.periodic if self.bundle.eval else None,
        )
        state = train(training, self.state)
        latest = self.checkpointer.latest()
        if latest is None or latest.step < state.step:
            # Evaluation and upload can be preempted too: a retry then starts from here, not from scratch.
            save_checkpoint(training, state, capture_rng())
        return state

    def evaluate(self, state: TrainState) -> EvaluationSummary:
        """Base against adapted on every eval set, and the gate's verdict."""
        evaluator, model = self.evaluator, self.model
        self._stage("evaluating", state)
        adapted = evaluator.scores(model)
        if self.trainable.is_adapter:
            self._stop_if_requested("between the adapted and the base model's evaluation")
            base = evaluator.scores(model, base=True)
        else:
            base = {name: SetScores.from_json(scores) for name, scores in (state.base_losses or {}).items()}
        summary = evaluator.summary(self.config.evaluation.gate, base, adapted)
        if self.dist.is_main:
            self.hooks.on_evaluation(summary)
        return summary

    def publish(self, state: TrainState, summary: EvaluationSummary) -> TrainingReport:
        """The artifact and its report, written last; the report also goes next to the checkpoints."""
        dist, config = self.dist, self.config
        self._stop_if_requested("after the evaluation, before the upload")
        evaluated = time.monotonic()
        report = TrainingReport(
            job={"namespace": config.job.namespace, "name": config.job.name, "uid": config.job.uid},
            config_sha256=self.loaded.sha256,
            model_revision=self.fetched.revision,
            data=[SourceStatistics(**asdict(stats)) for stats in self.bundle.train_stats],
            steps=state.step,
            tokens_seen=state.tokens_seen,
            wall_seconds=state.wall_seconds,
            train_seconds=round(state.wall_seconds, 3),
            resumed_from_step=state.resumed_from_step,
            final_train_loss=state.last_loss
            if state.last_loss is not None and math.isfinite(state.last_loss)
            else None,
            evaluation=summary,
            versions=_versions(),
            device=self._device_facts(),
        )
        self._stage("uploading", state)
        full_state = dist.accelerator.get_state_dict(self.model) if dist.fsdp else None  # a collective under FSDP
        if dist.is_main:
            staging = self.target.staging()
            write_model_files(
                staging,
                self.model,
                self.tokenizer,
                is_adapter=self.trainable.is_adapter,
                model_uri=config.model.uri,
                revision=self.fetched.revision,
                dtype=self.placement.compute_dtype,
                state_dict=full_state,
            )
            if self.metrics_file.is_file():
                (staging / "metrics.jsonl").write_bytes(self.metrics_file.read_bytes())
            report.artifact = publish(self.target, staging, report)
            report.wall_seconds += time.monotonic() - evaluated
            self.checkpointer.location.write_bytes(REPORT_FILE_NAME, report.model_dump_json(indent=2).encode())
            self.hooks.on_end(report)
            write_final_summary(report)
        dist.barrier()
        return report

    def _stop_if_requested(self, where: str) -> None:
        """A long evaluation can outlast the grace period: stop between its phases (the last step is checkpointed)."""
        if self.dist.any(self.stop.requested):
            raise Preempted(f"stopped by {self.stop.signal_name or 'a stop request'} {where}; checkpoint saved")

    def _stage(self, stage: str, state: TrainState) -> None:
        if self.dist.is_main:
            self.hooks.on_stage(ProgressReport(stage=stage, step=state.step, total_steps=self.total_steps))

    def _device_facts(self) -> dict[str, Any]:
        dist, layout, trainable = self.dist, self.layout, self.trainable
        facts = {
            "type": dist.device.type,
            "processes": dist.world_size,
            "precision": str(self.placement.compute_dtype).removeprefix("torch."),
            "attention": trainable.attn_implementation,
            "gradient_checkpointing": trainable.gradient_checkpointing,
            "packing": layout.packing,
            "micro_batch_tokens": layout.micro_batch_tokens,
            "fsdp": dist.fsdp,
        }
        if dist.device.type == "cuda":
            facts["name"] = torch.cuda.get_device_name(dist.device)
        return facts


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
