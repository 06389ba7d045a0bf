"""Workers that drain a work queue into reconciles, and the periodic resync that re-checks every
object even when no event arrives (a Secret created later, a lost watch event, an upload that
finished after the last look). One Controller per kind: FineTuneJobs and ModelAdapters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .context import Context, Outcome
from .kube import Kind, KubeError
from .metrics import OperatorMetrics
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconciler = Callable[[Context, str, str], Outcome]


class Controller:
    def __init__(
        self,
        name: str,
        kind: Kind,
        reconcile: Reconciler,
        context: Context,
        metrics: OperatorMetrics,
        workers: int = 2,
        record: Callable[[str, str, Outcome], None] | None = None,
    ):
        self.name = name
        self.kind = kind
        self.reconcile = reconcile
        self.context = context
        self.metrics = metrics
        self.queue = WorkQueue()
        self.workers = workers
        self.record = record or (lambda *_: None)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        resync = threading.Thread(target=self._resync, name=f"{self.name}-resync", daemon=True)
        resync.start()
        self._threads.append(resync)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def observe_queue(self) -> None:
        self.metrics.workqueue_depth.labels(self.name).set(len(self.queue))

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            namespace, name = key
            started = time.monotonic()
            try:
                outcome = self.reconcile(self.context, namespace, name)
            except Exception as error:  # a failed reconcile is retried, never fatal
                delay = self.queue.retry(key)
                log.warning("%s %s/%s failed, retrying in %.1fs: %s", self.name, namespace, name, delay, error)
                self.metrics.reconciled(self.name, time.monotonic() - started, error)
            else:
                self.queue.forget(key)
                self.metrics.reconciled(self.name, time.monotonic() - started, None)
                self.record(namespace, name, outcome)
                if outcome.requeue_after is not None:
                    self.queue.add_after(key, outcome.requeue_after)
            finally:
                self.queue.done(key)

    def _resync(self) -> None:
        while not self._stop.wait(self.context.settings.resync_seconds):
            try:
                for namespace, name in self.list_keys():
                    self.enqueue(namespace, name)
            except KubeError as error:
                log.warning("%s resync could not list: %s", self.name, error)

    def list_keys(self) -> list[Key]:
        keys = []
        for namespace in self.context.settings.namespaces or [None]:
            for item in self.context.kube.list(self.kind, namespace):
                keys.append((item["metadata"]["namespace"], item["metadata"]["name"]))
        return keys


def job_metrics_recorder(metrics: OperatorMetrics) -> Callable[[str, str, Outcome], None]:
    """Jobs by phase, queue wait and duration, from what each FineTuneJob reconcile found."""

    started: set[tuple[str, str, str | None]] = set()  # queue wait is observed once per job, not per resume

    def record(namespace: str, name: str, outcome: Outcome) -> None:
        metrics.job_phase(namespace, name, outcome.phase)
        if outcome.phase is None:
            started.difference_update({key for key in started if key[:2] == (namespace, name)})
        status = outcome.status
        if status is not None and status.queue is not None:
            metrics.preemptions.labels(namespace, name).set(status.queue.preemptions)
        for change in outcome.changes:
            condition = change.condition
            if condition.status != "True" or status is None:
                continue
            key = (namespace, name, outcome.created)
            if condition.type == "Running" and status.start_time and key not in started:
                started.add(key)
                metrics.job_started(outcome.created, status.start_time)
            elif condition.type in ("Succeeded", "Failed"):
                result = "succeeded" if condition.type == "Succeeded" else "failed"
                metrics.job_finished(result, status.start_time, status.completion_time)

    return record
