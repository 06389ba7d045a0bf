"""When each Job of a namespace first has a pod bound to a node, seen through a watch of its pods."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api import Api, ApiError
from .manifests import bound_job


class BindWatch:
    """Records, per Job name, the monotonic time its first pod was seen bound (spec.nodeName set)."""

    def __init__(self, api: Api, namespace: str):
        self.api = api
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.bound: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bind-watch-{namespace}", daemon=True)
        self.error: Exception | None = None

    def start(self) -> BindWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _see(self, pod: dict[str, Any]) -> None:
        job = bound_job(pod)
        if job is not None and job not in self.bound:
            with self._changed:
                self.bound[job] = time.monotonic()
                self._changed.notify_all()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                pods, version = self.api.list(self.path)
                for pod in pods:
                    self._see(pod)
                try:
                    for event in self.api.watch(self.path, version, timeout_seconds=60):
                        if self._stop.is_set():
                            return
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._see(event["object"])
                except ApiError as error:
                    if error.status != 410:  # expired: list again
                        raise
        except Exception as error:
            with self._changed:
                self.error = error
                self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` Jobs have a bound pod; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.bound) < count:
                if self.error is not None:
                    raise RuntimeError(f"the pod watch failed: {self.error}") from self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True


def create_all(api: Api, path: str, manifests: list[dict[str, Any]], workers: int = 8) -> dict[str, float]:
    """POST every manifest to ``path`` from ``workers`` threads; returns name -> monotonic time it was sent."""
    sent: dict[str, float] = {}

    def create(manifest: dict[str, Any]) -> None:
        sent[manifest["metadata"]["name"]] = time.monotonic()
        api.create(path, manifest, exist_ok=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(create, manifest) for manifest in manifests]:
            future.result()
    return sent


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
