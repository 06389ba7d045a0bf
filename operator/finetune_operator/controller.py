"""Workers that drain a work queue into reconciles, and the periodic resync that re-checks every
object even when no event arrives (a Secret created later, an upload that finished after the last
look). One Controller per kind: FineTuneJobs and ModelAdapters.

The resync reads the keys from the watch-fed cache, not from the API, and skips settled objects (a
finished job whose outcome is recorded): those cost nothing until they change. Workers start only once
the caches hold the initial lists, so a first reconcile never takes a child it has not seen yet for
missing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .context import Context, Outcome
from .kube import Kind
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
        settled: Callable[[dict], bool] | None = None,
    ):
        self.name = name
        self.kind = kind
        self.reconcile = reconcile
        self.context = context
        self.metrics = metrics
        self.queue = WorkQueue(observer=metrics.workqueue(name))
        self.workers = workers
        self.record = record or (lambda *_: None)
        self.settled = settled or (lambda _: False)
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
        while not self.context.caches.ready.wait(1.0):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            namespace, name = key
            started = time.monotonic()
            try:
                outcome = self.reconcile(self.context, namespace, name)
            except Exception as error:  # a failed reconcile is retried, never fatal
                delay = self.queue.add_rate_limited(key)
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
            if self.context.caches.ready.is_set():
                for namespace, name in self.due_keys():
                    self.enqueue(namespace, name)

    def due_keys(self) -> list[Key]:
        """The cached objects the resync looks at again: all but the settled ones."""
        store = self.context.caches[self.kind]
        return [store.key_of(item) for item in store if not self.settled(item)]


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
            if condition.type == "Planned":
                metrics.cache_used(namespace, status.plan)  # once per plan: a stale plan's successor counts again
            if condition.type == "Running" and status.start_time and key not in started:
                started.add(key)
                metrics.job_started(outcome.created, status.start_time)
            elif condition.type in ("Succeeded", "Failed"):
                result = "succeeded" if condition.type == "Succeeded" else "failed"
                metrics.job_finished(result, status.start_time, status.completion_time)
                if condition.type == "Succeeded":
                    metrics.estimate_judged(status.plan)

    return record
