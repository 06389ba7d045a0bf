"""Rank 0 pushes progress reports to the operator, which writes them into the FineTuneJob's status.

The hook methods only put a report in a bounded queue; one daemon thread sends them. Training never
waits for the operator: when the queue is full the oldest routine (step) report makes room and is
counted as dropped; checkpoint, eval, stage and final reports never do.

Every report carries the latest numbers of the run (step, loss, learning rate, ...), so a queued
routine report is superseded by any later report: routine reports go out at most once per
``min_interval_seconds`` (the newest wins), the others at once and in order.

Connection errors, 5xx and 429 are retried with exponential backoff and jitter. Any other 4xx is a
report the operator will never accept (a bad request does not get better): logged once with the
operator's message, and dropped. The token file is read for every request, because the kubelet
rotates it; the token itself is never logged. ``on_end`` waits, boundedly, until the final report
(evaluation and artifact) is delivered, so that it reaches the status before the process exits.
"""

from __future__ import annotations

import atexit
import http.client
import json
import math
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from finetune_core.api import CheckpointReport, EvaluationSummary, ProgressEndpoint, ProgressReport, TrainingReport

from . import log
from .report import StepMetrics, TrainingHooks

MAX_ANSWER_BYTES = 64 * 1024
# Fields of a step that every later report repeats (a merge patch keeps what a report leaves out,
# but a report that carries them makes any routine report queued before it redundant).
LATEST_FIELDS = ("total_steps", "epoch", "train_loss", "learning_rate", "tokens_per_second", "eta_seconds")


@dataclass
class PushCounters:
    sent: int = 0
    superseded: int = 0  # routine reports replaced by a later report before their turn
    dropped: int = 0  # routine reports pushed out of a full queue, or still queued when the flush gave up
    failed: int = 0  # refused by the operator (4xx but 429), or given up after retrying
    retries: int = 0


@dataclass
class _Queued:
    report: ProgressReport
    routine: bool


@dataclass
class _Answer:
    status: int
    error: str = ""
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class _Unreachable(Exception):
    """The request did not get an answer: connection, TLS, timeout or an unreadable token file."""


@dataclass
class _Failures:
    """What has been logged already, so that an operator that is away does not flood the log."""

    streak: int = 0
    refusals: set[tuple[int, str]] = field(default_factory=set)


class ProgressPusher(TrainingHooks):
    """Sends the run's progress to ``endpoint`` from a background thread; see the module docstring."""

    def __init__(
        self,
        endpoint: ProgressEndpoint,
        *,
        max_queue: int = 64,
        request_timeout: float = 10.0,
        flush_seconds: float = 30.0,
        exit_flush_seconds: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_attempts: int = 10,
    ):
        if urlsplit(endpoint.url).scheme != "https":
            raise ValueError(f"progress.url {endpoint.url} is not https: the token is never sent in clear")
        self.endpoint = endpoint
        self.max_queue = max(1, max_queue)
        self.request_timeout = request_timeout
        self.flush_seconds = flush_seconds
        self.exit_flush_seconds = exit_flush_seconds
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max(1, max_attempts)
        self.counters = PushCounters()

        self._latest: dict[str, Any] = {}
        self._step = 0
        self._queue: deque[_Queued] = deque()
        self._cond = threading.Condition()
        self._last_sent_at = -math.inf
        self._closing = False
        self._deadline = math.inf
        self._failures = _Failures()
        self._thread = threading.Thread(target=self._send_loop, name="progress-push", daemon=True)
        self._thread.start()
        # A run that ends by an exception (preempted, failed) never calls on_end: still send what is queued.
        atexit.register(self._close_at_exit)

    # -- TrainingHooks: build a report, enqueue it, return ------------------------------------

    def on_start(self, progress: ProgressReport) -> None:
        self._enqueue(self._with_latest(progress), routine=False)

    def on_step(self, metrics: StepMetrics) -> None:
        report = metrics.as_progress()
        self._latest = {name: getattr(report, name) for name in LATEST_FIELDS if getattr(report, name) is not None}
        self._enqueue(report, routine=True)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        eval_loss = metrics.get("eval_loss")
        finite = eval_loss if eval_loss is not None and math.isfinite(eval_loss) else None
        self._enqueue(self._with_latest(ProgressReport(step=step, eval_loss=finite)), routine=False)

    def on_checkpoint(self, checkpoint: CheckpointReport) -> None:
        self._enqueue(self._with_latest(ProgressReport(step=checkpoint.step, checkpoint=checkpoint)), routine=False)

    def on_stage(self, progress: ProgressReport) -> None:
        self._enqueue(self._with_latest(progress), routine=False)

    def on_evaluation(self, summary: EvaluationSummary) -> None:
        report = ProgressReport(stage="evaluating", step=self._step, evaluation=summary)
        self._enqueue(self._with_latest(report), routine=False)

    def on_end(self, report: TrainingReport) -> None:
        final = ProgressReport(
            stage="done",
            step=report.steps,
            train_loss=report.final_train_loss,
            eta_seconds=0,
            evaluation=report.evaluation,
            artifact=report.artifact,
        )
        self._enqueue(self._with_latest(final), routine=False)
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued, giving up after ``timeout`` seconds (default flush_seconds); stop the sender."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + (self.flush_seconds if timeout is None else timeout)
            self._cond.notify_all()
        # A request in flight may outlive the deadline by its own timeout, never more.
        self._thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + self.request_timeout + 1.0)
        atexit.unregister(self._close_at_exit)
        counters = self.counters
        log.info(
            "progress_push_finished",
            sent=counters.sent,
            superseded=counters.superseded,
            dropped=counters.dropped,
            failed=counters.failed,
            retries=counters.retries,
        )

    def _close_at_exit(self) -> None:
        self.close(self.exit_flush_seconds)

    def _with_latest(self, report: ProgressReport) -> ProgressReport:
        missing = {name: value for name, value in self._latest.items() if getattr(report, name) is None}
        return report.model_copy(update=missing)

    def _enqueue(self, report: ProgressReport, routine: bool) -> None:
        self._step = report.step
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self.max_queue:
                oldest = next((i for i, queued in enumerate(self._queue) if queued.routine), None)
                if oldest is None and routine:
                    self._overflowed()  # the new report is the oldest routine one
                    return
                if oldest is not None:
                    del self._queue[oldest]
                    self._overflowed()
                # else a queue full of checkpoint/eval/stage reports grows by one: a run has few of them.
            self._queue.append(_Queued(report, routine))
            self._cond.notify_all()

    def _overflowed(self) -> None:
        if self.counters.dropped == 0:
            log.warning("progress_queue_full", max_queue=self.max_queue, url=self.endpoint.url)
        self.counters.dropped += 1

    # -- the sender thread ---------------------------------------------------------------------

    def _send_loop(self) -> None:
        while (queued := self._next()) is not None:
            try:
                self._deliver(queued)
            except Exception as error:  # a bug here must not end the thread: later reports still go out
                log.error("progress_push_bug", exc_info=True, error=repr(error))
                self.counters.failed += 1

    def _next(self) -> _Queued | None:
        """The next report to send (waiting for one, or for a routine report's turn); None to stop."""
        with self._cond:
            while True:
                self._discard_superseded()
                now = time.monotonic()
                if self._closing and now >= self._deadline:
                    if self._queue:
                        log.warning("progress_flush_gave_up", unsent=len(self._queue))
                        self.counters.dropped += len(self._queue)
                        self._queue.clear()
                    return None
                if self._queue:
                    head = self._queue[0]
                    wait = self._last_sent_at + self.endpoint.min_interval_seconds - now
                    if not head.routine or self._closing or wait <= 0:
                        return self._queue.popleft()
                elif self._closing:
                    return None
                else:
                    wait = None
                if self._closing:
                    wait = min(wait if wait is not None else math.inf, self._deadline - now)
                self._cond.wait(wait)

    def _discard_superseded(self) -> None:
        if len(self._queue) < 2:
            return
        last = len(self._queue) - 1
        kept = [queued for i, queued in enumerate(self._queue) if not queued.routine or i == last]
        self.counters.superseded += len(self._queue) - len(kept)
        self._queue = deque(kept)

    def _deliver(self, queued: _Queued) -> None:
        body = queued.report.model_dump_json(by_alias=True, exclude_none=True).encode()
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._post(body)
            except _Unreachable as error:
                reason = str(error)
            else:
                if answer.status < 300:
                    self._delivered()
                    return
                if not answer.retryable:
                    self._refused(queued.report, answer)
                    return
                reason = f"HTTP {answer.status} {answer.error}".strip()
            self._retrying(reason, attempt)
            if attempt >= self.max_attempts:
                log.warning("progress_report_given_up", step=queued.report.step, attempts=attempt, reason=reason)
                self.counters.failed += 1
                return
            if not self._wait_to_retry(queued, attempt):
                return

    def _wait_to_retry(self, queued: _Queued, attempt: int) -> bool:
        """Sleep the backoff; False when the report is not worth retrying any more."""
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 retry jitter, not cryptography
        until = time.monotonic() + delay
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closing and now >= self._deadline:
                    self.counters.failed += 1
                    return False
                if queued.routine and self._queue:
                    self.counters.superseded += 1
                    return False
                if now >= until:
                    self.counters.retries += 1
                    return True
                self._cond.wait(min(until, self._deadline) - now)

    def _post(self, body: bytes) -> _Answer:
        try:
            token = Path(self.endpoint.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise _Unreachable(f"cannot read the token file {self.endpoint.token_file}: {error.strerror}") from None
        url = urlsplit(self.endpoint.url)
        path = url.path + (f"?{url.query}" if url.query else "")
        try:
            # The CA is read for every request too: a renewed CA reaches the pod as an updated file.
            context = ssl.create_default_context(cafile=self.endpoint.ca_file)
            connection = http.client.HTTPSConnection(
                url.hostname, url.port, context=context, timeout=self.request_timeout
            )
            try:
                connection.request(
                    "POST",
                    path,
                    body=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                        "User-Agent": "finetune-trainer",
                    },
                )
                response = connection.getresponse()
                answer = response.read(MAX_ANSWER_BYTES)
            finally:
                connection.close()
        except (OSError, http.client.HTTPException) as error:  # ssl errors and timeouts are OSErrors
            raise _Unreachable(f"{type(error).__name__}: {error}") from None
        return _Answer(response.status, *_error_of(answer))

    def _delivered(self) -> None:
        with self._cond:
            self.counters.sent += 1
            self._last_sent_at = time.monotonic()
        if self._failures.streak:
            log.info("progress_push_recovered", after_failures=self._failures.streak)
            self._failures.streak = 0

    def _retrying(self, reason: str, attempt: int) -> None:
        self._failures.streak += 1
        if self._failures.streak == 1:
            log.warning("progress_push_failing", url=self.endpoint.url, reason=reason, attempt=attempt)
        else:
            log.debug("progress_push_failing", reason=reason, attempt=attempt)

    def _refused(self, report: ProgressReport, answer: _Answer) -> None:
        self.counters.failed += 1
        kind = (answer.status, answer.error)
        fields = {"status": answer.status, "error": answer.error, "message": answer.message, "step": report.step}
        if kind in self._failures.refusals:
            log.debug("progress_report_refused", **fields)
        else:
            self._failures.refusals.add(kind)
            log.warning("progress_report_refused", url=self.endpoint.url, **fields)


def _error_of(answer: bytes) -> tuple[str, str]:
    """The operator's {"error", "message"} answer, or what there is of it."""
    try:
        parsed = json.loads(answer or b"{}")
    except ValueError:
        return "", answer[:200].decode("utf-8", "replace")
    if not isinstance(parsed, dict):
        return "", str(parsed)[:200]
    return str(parsed.get("error", "")), str(parsed.get("message", ""))


def progress_hooks(endpoint: ProgressEndpoint | None) -> list[TrainingHooks]:
    """The pusher when the configuration names an endpoint (the operator sets it), else nothing."""
    if endpoint is None:
        return []
    try:
        return [ProgressPusher(endpoint)]
    except ValueError as error:
        log.warning("progress_push_disabled", reason=str(error))
        return []
