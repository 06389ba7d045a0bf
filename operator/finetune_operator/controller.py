"""Workers that drain the work queue into reconciles, and the periodic resync that re-checks every
job even when no event arrives (a Secret created later, a lost watch event)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .kube import FINETUNEJOBS, KubeError
from .reconcile import Context, reconcile
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class Controller:
    def __init__(self, context: Context, workers: int = 4, on_result: Callable[..., None] | None = None):
        self.context = context
        self.queue = WorkQueue()
        self.workers = workers
        self.on_result = on_result or (lambda **_: None)
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
                phase = reconcile(self.context, namespace, name)
            except Exception as error:  # a failed reconcile is retried, never fatal
                delay = self.queue.retry(key)
                log.warning("reconcile of %s/%s failed, retrying in %.1fs: %s", namespace, name, delay, error)
                self.on_result(
                    namespace=namespace, name=name, phase=None, error=error, seconds=time.monotonic() - started
                )
            else:
                self.queue.forget(key)
                self.on_result(
                    namespace=namespace, name=name, phase=phase, error=None, seconds=time.monotonic() - started
                )
            finally:
                self.queue.done(key)

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
