"""Workers that drain the work queue into reconciles, and the periodic resync that re-checks every
job even when no event arrives (a Secret created later, a lost watch event)."""

from __future__ import annotations

import logging
import threading
import time

from .kube import FINETUNEJOBS, KubeError
from .metrics import OperatorMetrics
from .reconcile import Context, Outcome, reconcile
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class Controller:
    def __init__(self, context: Context, metrics: OperatorMetrics, workers: int = 4):
        self.context = context
        self.metrics = metrics
        self.queue = WorkQueue()
        self.workers = workers
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        resync = threading.Thread(target=self._resync, name="resync", daemon=True)
        resync.start()
        self._threads.append(resync)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            namespace, name = key
            started = time.monotonic()
            try:
                outcome = reconcile(self.context, namespace, name)
            except Exception as error:  # a failed reconcile is retried, never fatal
                delay = self.queue.retry(key)
                log.warning("reconcile of %s/%s failed, retrying in %.1fs: %s", namespace, name, delay, error)
                self.metrics.reconciled("finetunejob", time.monotonic() - started, error)
            else:
                self.queue.forget(key)
                self.metrics.reconciled("finetunejob", time.monotonic() - started, None)
                self._record(namespace, name, outcome)
            finally:
                self.queue.done(key)

    def _record(self, namespace: str, name: str, outcome: Outcome) -> None:
        self.metrics.job_phase(namespace, name, outcome.phase)
        status = outcome.status
        for change in outcome.changes:
            condition = change.condition
            if condition.status != "True" or status is None:
                continue
            if condition.type == "Running" and status.restarts == 0:
                self.metrics.job_started(outcome.created, status.start_time)
            elif condition.type in ("Succeeded", "Failed"):
                result = "succeeded" if condition.type == "Succeeded" else "failed"
                self.metrics.job_finished(result, status.start_time, status.completion_time)

    def observe_queue(self) -> None:
        self.metrics.workqueue_depth.labels("finetunejob").set(len(self.queue))

    def _resync(self) -> None:
        while not self._stop.wait(self.context.settings.resync_seconds):
            try:
                for namespace, name in self.list_jobs():
                    self.enqueue(namespace, name)
            except KubeError as error:
                log.warning("resync could not list FineTuneJobs: %s", error)

    def list_jobs(self) -> list[Key]:
        namespaces = self.context.settings.namespaces or [None]
        keys = []
        for namespace in namespaces:
            for item in self.context.kube.list(FINETUNEJOBS, namespace):
                keys.append((item["metadata"]["namespace"], item["metadata"]["name"]))
        return keys
