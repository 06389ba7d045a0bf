"""The training loop: optimizer steps of ``training.batchTokens`` real tokens over all ranks.

Per step (reads like the algorithm):
1. take the step's micro-batches from the epoch's plan at the saved data position;
2. this rank runs its share, accumulating gradients without synchronising until its last one;
   each micro-batch's summed loss is divided by the units (tokens or pairs) of the whole step and
   multiplied by the ranks (DDP and FSDP average gradients over ranks), so the step's gradient is
   exactly that of one batch of all its tokens;
3. clip, AdamW step, schedule step;
4. report, evaluate and checkpoint when due.

A stop request (SIGTERM) is honoured at micro-batch boundaries: the unfinished step is dropped,
the generators are put back to where that step began, and the checkpoint holds the state after
the last finished step, so a resumed run repeats the dropped step exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from finetune_core.api import CheckpointReport, ProgressReport

from . import log
from .batching import Step, collate
from .checkpoint import Checkpointer
from .data.types import Example, PreferenceExample
from .distributed import Distributed
from .errors import Preempted
from .inputs import to_model_inputs
from .objectives import Objective
from .report import StepMetrics, TrainingHooks
from .signals import StopRequest
from .state import TrainState, capture_rng, restore_rng

# (epoch, the layouts it already ran under) -> its remaining optimizer steps (batching.plan_steps[_after]); asked
# at every step, so it keeps the plan it gave last (batching.epoch_planner does)
PlanForEpoch = Callable[[int, Sequence[dict]], Sequence[Step]]


def epoch_length(plan_for_epoch: PlanForEpoch, epoch: int, done: Sequence[dict] = ()) -> int:
    return sum(segment["steps"] for segment in done) + len(plan_for_epoch(epoch, done))


def total_steps_for(
    plan_for_epoch: PlanForEpoch,
    epochs: float | None,
    max_steps: int | None,
    resumed_epoch: int = 0,
    done: Sequence[dict] = (),
) -> int:
    """Steps of the whole run; ``done``: the layouts ``resumed_epoch`` ran under before this attempt's."""
    if max_steps is not None:
        return max_steps

    def length(epoch: int) -> int:
        return epoch_length(plan_for_epoch, epoch, done if epoch == resumed_epoch else ())

    whole, fraction = int(epochs), epochs - int(epochs)
    total = sum(length(epoch) for epoch in range(whole))
    if fraction:
        total += math.ceil(fraction * length(whole))
    return max(1, total)


@dataclass
class TrainingRun:
    """Everything the loop touches, assembled by run.py."""

    dist: Distributed
    model: torch.nn.Module  # prepared by Accelerate
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Objective
    examples: Sequence[Example] | Sequence[PreferenceExample]  # what the plan's indices point into
    plan_for_epoch: PlanForEpoch
    total_steps: int
    packing: bool  # micro-batches as packed rows (else one padded row per sequence)
    pad_token_id: int
    flat_batches: bool  # rows joined into one for varlen attention
    max_grad_norm: float
    hooks: TrainingHooks
    stop: StopRequest
    checkpointer: Checkpointer | None = None
    checkpoint_every: int = 0
    metrics_file: Path | None = None
    evaluate_every: int | None = None
    periodic_eval: Callable[[torch.nn.Module], dict[str, float]] | None = None

    def plan(self, epoch: int, done: Sequence[dict] = ()) -> Sequence[Step]:
        return self.plan_for_epoch(epoch, done)  # batching.epoch_planner keeps the plan asked for last


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float | None
    tokens: int
    learning_rate: float  # the rate this step was taken with


class StepInterrupted(Exception):
    """A stop request arrived inside a step; the step's partial gradients were discarded."""


def train(run: TrainingRun, state: TrainState) -> TrainState:
    """Train from ``state`` to ``run.total_steps``; raises Preempted after checkpointing on a stop request."""
    run.model.train()
    if run.dist.is_main:
        run.hooks.on_start(
            ProgressReport(
                stage="training",
                step=state.step,
                total_steps=run.total_steps,
                resumed_from_step=state.resumed_from_step,
            )
        )
    started = time.monotonic()
    base_wall = state.wall_seconds
    steps_this_attempt = 0
    while state.step < run.total_steps:
        plan = run.plan(state.epoch, state.epoch_segments)
        if state.step_in_epoch >= len(plan):
            state.epoch, state.step_in_epoch, state.epoch_segments = state.epoch + 1, 0, []
            continue
        rng_at_step_start = capture_rng()
        step_started = time.monotonic()
        try:
            result = run_step(run, plan[state.step_in_epoch])
        except StepInterrupted:
            restore_rng(rng_at_step_start)
            state.wall_seconds = base_wall + time.monotonic() - started
            preempt(run, state, rng_at_step_start)
        state.step += 1
        state.step_in_epoch += 1
        state.tokens_seen += result.tokens
        state.last_loss = result.loss
        state.wall_seconds = base_wall + time.monotonic() - started
        steps_this_attempt += 1

        if run.dist.is_main:
            run.hooks.on_step(
                _metrics(run, state, result, time.monotonic() - step_started, started, steps_this_attempt)
            )
        if run.dist.any(run.stop.requested):
            # Before a periodic evaluation, which could outlast the grace period: checkpoint and go now.
            preempt(run, state, capture_rng())
        if (
            run.periodic_eval
            and run.evaluate_every
            and state.step % run.evaluate_every == 0
            and state.step < run.total_steps
        ):
            metrics = run.periodic_eval(run.model)
            run.model.train()
            state.last_eval_loss = metrics.get("eval_loss")
            state.history.append({"step": state.step, **metrics})
            if run.dist.is_main:
                run.hooks.on_eval(state.step, metrics)
        if run.checkpointer and run.checkpoint_every and state.step % run.checkpoint_every == 0:
            save_checkpoint(run, state, capture_rng())
        if run.dist.any(run.stop.requested):
            preempt(run, state, capture_rng())
    return state


def run_step(run: TrainingRun, step: Step) -> StepResult:
    """One optimizer step: this rank's micro-batches of ``step``; returns the step's mean loss over all ranks."""
    dist = run.dist
    # The plan gives every rank the same number of micro-batches (collectives run inside each pass).
    mine = step.for_rank(dist.rank)
    scale = dist.world_size / max(run.objective.units(step), 1)

    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    for index, indices in enumerate(mine):
        if dist.any(run.stop.requested):
            run.optimizer.zero_grad(set_to_none=True)
            raise StepInterrupted
        batch = collate(run.examples, indices, run.packing, run.pad_token_id)
        inputs = to_model_inputs(batch, run.pad_token_id, flat=run.flat_batches).to(dist.device)
        last = index == len(mine) - 1
        sync = contextlib.nullcontext() if last else dist.accelerator.no_sync(run.model)
        with sync:
            loss = run.objective.summed_loss(run.model, inputs) * scale
            dist.accelerator.backward(loss)
        loss_sum += loss.detach().double()

    grad_norm = None
    if run.max_grad_norm > 0:
        norm = dist.accelerator.clip_grad_norm_(run.model.parameters(), run.max_grad_norm)
        grad_norm = float(norm) if norm is not None else None
    learning_rate = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    (total,) = dist.sum([float(loss_sum) / dist.world_size])
    return StepResult(loss=total, grad_norm=grad_norm, tokens=step.real_tokens, learning_rate=learning_rate)


def save_checkpoint(run: TrainingRun, state: TrainState, rng: dict[str, Any]) -> None:
    checkpoint = run.checkpointer.save(state, run.model, run.optimizer, run.scheduler, rng, run.metrics_file)
    if run.dist.is_main:
        run.hooks.on_checkpoint(CheckpointReport(step=checkpoint.step, uri=checkpoint.uri))


def preempt(run: TrainingRun, state: TrainState, rng: dict[str, Any]) -> None:
    """Save the state after the last finished step (unless nothing happened since the last save) and stop."""
    latest = run.checkpointer.latest() if run.checkpointer else None
    if run.checkpointer and state.step > 0 and (latest is None or latest.step < state.step):
        save_checkpoint(run, state, rng)
    log.warning("preempted", step=state.step)
    saved = "checkpoint saved" if state.step > 0 else "no step finished, nothing to save"
    raise Preempted(f"stopped by {run.stop.signal_name or 'a stop request'} at step {state.step}; {saved}")


def _metrics(run: TrainingRun, state: TrainState, result: StepResult, seconds: float, started: float, steps: int):
    elapsed = time.monotonic() - started
    remaining = run.total_steps - state.step
    earlier = sum(segment["steps"] for segment in state.epoch_segments)
    plan_length = max(1, earlier + len(run.plan(state.epoch, state.epoch_segments)))
    return StepMetrics(
        step=state.step,
        total_steps=run.total_steps,
        epoch=round(state.epoch + (earlier + state.step_in_epoch) / plan_length, 4),
        loss=result.loss,
        learning_rate=result.learning_rate,
        grad_norm=result.grad_norm,
        tokens=result.tokens,
        step_seconds=round(seconds, 4),
        tokens_per_second=round(result.tokens / seconds, 1) if seconds > 0 else 0.0,
        eta_seconds=int(elapsed / steps * remaining) if steps else None,
    )
