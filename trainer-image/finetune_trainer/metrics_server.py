"""Rank 0's Prometheus endpoint, for a PodMonitor: the run's numbers as they change.

Served on FINETUNE_METRICS_PORT (default 9400; 0 turns it off) at /metrics, from a registry of its
own, so nothing else in the process (libraries' default collectors) ends up in it. A port that is
taken costs the metrics, never the run.
"""

from __future__ import annotations

import math
import os
import sys

from finetune_core.api import EvaluationSummary, ProgressReport, TrainingReport
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from . import log
from .report import StepMetrics, TrainingHooks

METRICS_PORT_ENV = "FINETUNE_METRICS_PORT"
DEFAULT_METRICS_PORT = 9400
PREFIX = "finetune_trainer"


class MetricsServer(TrainingHooks):
    """Gauges updated by the training hooks, served over HTTP until the run ends."""

    def __init__(self, port: int, addr: str = "0.0.0.0"):  # noqa: S104 scraped from outside the pod: it must listen on the pod IP
        self.registry = registry = CollectorRegistry()
        self.step = Gauge(f"{PREFIX}_step", "Optimizer steps done.", registry=registry)
        self.total_steps = Gauge(f"{PREFIX}_total_steps", "Optimizer steps planned.", registry=registry)
        self.epoch = Gauge(f"{PREFIX}_epoch", "Passes over the training mix.", registry=registry)
        self.train_loss = Gauge(f"{PREFIX}_train_loss", "Training loss of the last step.", registry=registry)
        self.eval_loss = Gauge(f"{PREFIX}_eval_loss", "Task eval loss of the last evaluation.", registry=registry)
        self.learning_rate = Gauge(f"{PREFIX}_learning_rate", "Learning rate of the last step.", registry=registry)
        self.tokens_per_second = Gauge(
            f"{PREFIX}_tokens_per_second", "Real tokens per second of the last step, all ranks.", registry=registry
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens", "Real tokens trained on by this process, all ranks.", registry=registry
        )
        self.eta_seconds = Gauge(
            f"{PREFIX}_eta_seconds", "Estimated seconds to the end of training.", registry=registry
        )
        # Only on CUDA: on a CPU run the series is absent rather than a misleading 0.
        self.gpu_memory_bytes = (
            Gauge(f"{PREFIX}_gpu_memory_bytes", "Peak GPU memory allocated by rank 0.", registry=registry)
            if _gpu_memory_bytes() is not None
            else None
        )
        self._server, self._thread = start_http_server(port, addr, registry=registry)
        self._stopped = False

    @property
    def port(self) -> int:
        return self._server.server_port

    def on_start(self, progress: ProgressReport) -> None:
        self._progress(progress)

    def on_step(self, metrics: StepMetrics) -> None:
        self.step.set(metrics.step)
        self.total_steps.set(metrics.total_steps)
        self.epoch.set(metrics.epoch)
        if math.isfinite(metrics.loss):
            self.train_loss.set(metrics.loss)
        self.learning_rate.set(metrics.learning_rate)
        self.tokens_per_second.set(metrics.tokens_per_second)
        self.tokens.inc(metrics.tokens)
        if metrics.eta_seconds is not None:
            self.eta_seconds.set(metrics.eta_seconds)
        self._gpu_memory()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        eval_loss = metrics.get("eval_loss")
        if eval_loss is not None and math.isfinite(eval_loss):
            self.eval_loss.set(eval_loss)

    def on_stage(self, progress: ProgressReport) -> None:
        self._progress(progress)

    def on_evaluation(self, summary: EvaluationSummary) -> None:
        self._gpu_memory()  # evaluation batches can be the peak

    def on_end(self, report: TrainingReport) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _gpu_memory(self) -> None:
        if self.gpu_memory_bytes is not None and (memory := _gpu_memory_bytes()) is not None:
            self.gpu_memory_bytes.set(memory)

    def _progress(self, progress: ProgressReport) -> None:
        self.step.set(progress.step)
        if progress.total_steps is not None:
            self.total_steps.set(progress.total_steps)


def _gpu_memory_bytes() -> int | None:
    torch = sys.modules.get("torch")  # loaded by the trainer; these hooks never load it themselves
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated()


_serving: MetricsServer | None = None


def metrics_hooks() -> list[TrainingHooks]:
    """The metrics server on FINETUNE_METRICS_PORT, or nothing when it is 0, invalid or taken.

    One per process: a run started in the same process (tests do that) replaces the previous one's.
    """
    global _serving
    if _serving is not None:
        _serving.stop()
        _serving = None
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    try:
        port = int(raw) if raw else DEFAULT_METRICS_PORT
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        log.warning("metrics_disabled", reason=f"{METRICS_PORT_ENV}={raw!r} is not a port number")
        return []
    if port == 0:
        return []
    try:
        _serving = MetricsServer(port)
    except OSError as error:
        log.warning("metrics_disabled", reason=f"cannot listen on port {port}: {error.strerror}")
        return []
    log.info("metrics_serving", port=_serving.port, path="/metrics")
    return [_serving]
