"""Progress hooks: what the training loop tells the outside world, and the ways it is told.

The loop calls one :class:`TrainingHooks` object (only on rank 0). Implementations here log JSON
lines and append to a metrics file; the push of progress reports to the operator is another
implementation of the same interface. A hook that fails is logged and otherwise ignored: losing a
progress report must never lose a training run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune_core.api import CheckpointReport, EvaluationSummary, ProgressReport, TrainingReport

from . import log


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, as the loop saw it."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens: int  # real tokens of this step, all ranks
    step_seconds: float
    tokens_per_second: float
    eta_seconds: int | None

    def as_progress(self) -> ProgressReport:
        return ProgressReport(
            stage="training",
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.epoch,
            train_loss=self.loss if math.isfinite(self.loss) else None,
            learning_rate=self.learning_rate,
            tokens_per_second=self.tokens_per_second,
            eta_seconds=self.eta_seconds,
        )


class TrainingHooks:
    """Called by the training run on rank 0. Every method does nothing unless overridden."""

    def on_start(self, progress: ProgressReport) -> None:
        """Training is about to start (or resume: ``progress.resumed_from_step``)."""

    def on_step(self, metrics: StepMetrics) -> None:
        """An optimizer step finished."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """A periodic evaluation finished (eval_loss and whatever else was measured)."""

    def on_checkpoint(self, checkpoint: CheckpointReport) -> None:
        """A checkpoint is complete (its marker written)."""

    def on_stage(self, progress: ProgressReport) -> None:
        """The run moved to another stage (evaluating, uploading)."""

    def on_evaluation(self, summary: EvaluationSummary) -> None:
        """The final evaluation and the gate's verdict."""

    def on_end(self, report: TrainingReport) -> None:
        """The run finished and its artifact is stored."""


class CompositeHooks(TrainingHooks):
    """Fans every call out to several hooks, isolating their failures."""

    def __init__(self, hooks: list[TrainingHooks]):
        self.hooks = hooks

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception as error:
                log.warning("hook_failed", hook=type(hook).__name__, method=method, error=repr(error))

    def on_start(self, progress):
        self._each("on_start", progress)

    def on_step(self, metrics):
        self._each("on_step", metrics)

    def on_eval(self, step, metrics):
        self._each("on_eval", step, metrics)

    def on_checkpoint(self, checkpoint):
        self._each("on_checkpoint", checkpoint)

    def on_stage(self, progress):
        self._each("on_stage", progress)

    def on_evaluation(self, summary):
        self._each("on_evaluation", summary)

    def on_end(self, report):
        self._each("on_end", report)


class JsonLogHooks(TrainingHooks):
    """Structured log lines; routine steps every ``every_steps`` steps (and the first and last)."""

    def __init__(self, every_steps: int = 1):
        self.every_steps = max(1, every_steps)

    def on_start(self, progress):
        log.info("training_started", **progress.model_dump(exclude_none=True))

    def on_step(self, metrics):
        if metrics.step % self.every_steps == 0 or metrics.step in (1, metrics.total_steps):
            log.info("step", **asdict(metrics))

    def on_eval(self, step, metrics):
        log.info("eval", step=step, **metrics)

    def on_checkpoint(self, checkpoint):
        log.info("checkpoint_saved", step=checkpoint.step, uri=checkpoint.uri)

    def on_stage(self, progress):
        log.info("stage", **progress.model_dump(exclude_none=True))

    def on_evaluation(self, summary):
        log.info("evaluation", **summary.model_dump(exclude_none=True))

    def on_end(self, report):
        log.info(
            "training_finished",
            steps=report.steps,
            tokens_seen=report.tokens_seen,
            wall_seconds=round(report.wall_seconds, 3),
            artifact=report.artifact.uri if report.artifact else None,
            digest=report.artifact.digest if report.artifact else None,
        )


class MetricsFileHooks(TrainingHooks):
    """Appends every step and evaluation to a JSON-lines file (kept in checkpoints and the artifact)."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def on_step(self, metrics):
        self._append({"kind": "step", **asdict(metrics)})

    def on_eval(self, step, metrics):
        self._append({"kind": "eval", "step": step, **metrics})

    def on_checkpoint(self, checkpoint):
        self._append({"kind": "checkpoint", "step": checkpoint.step, "uri": checkpoint.uri})

    def on_evaluation(self, summary):
        self._append({"kind": "evaluation", **summary.model_dump(exclude_none=True)})
