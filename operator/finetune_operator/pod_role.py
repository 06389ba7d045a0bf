"""The leader's mark on its own pod: the label ``finetune.dev/role: leader``, which the chart's Service selects
besides the Deployment's labels, so its endpoints hold the leader only. Only the leader serves the progress
endpoint and /metrics; without the mark, the Service would send half the trainers' pushes and Prometheus'
scrapes to the standby, which serves neither.

The leader sets the mark once its endpoints listen and removes it when it stops; every replica removes it from
its own pod when it starts, since a container restarted after losing the Lease is the same pod, still marked.
A mark left on a pod whose process died (SIGKILL, a node lost) does no harm: the pod is gone or not ready,
and not ready pods are no endpoints. A leader frozen (SIGSTOP, a paused VM) or cut off from the API server may
keep its mark and its readiness for a while: its progress endpoint checks that it still holds the Lease before
every write (progress/server.py), so nothing it receives then is written.

Best effort throughout: the patch is retried with backoff while it fails, and a replica whose pod name is
unknown (a local run), or names no pod, marks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .kube import PODS, Kube, KubeError

log = logging.getLogger(__name__)

ROLE_LABEL = "finetune.dev/role"
LEADER = "leader"
MAX_BACKOFF_SECONDS = 30.0


def nothing_to_mark(error: KubeError) -> bool:
    """A 404: no pod of that name, so there is no mark to set or remove, and asking again cannot change that
    (a replica's own pod exists while it runs; a wrong FINETUNE_POD_NAME, or a process that is no pod, as in
    the benchmark, would otherwise retry forever, a request every 30 s)."""
    return error.status == 404


def role_patch(leading: bool) -> dict[str, Any]:
    """The merge patch that marks a pod as the leader's, or (a null value) removes the mark."""
    return {"metadata": {"labels": {ROLE_LABEL: LEADER if leading else None}}}


class PodRole:
    """Brings the mark on our own pod to what this replica is, one request at a time: a late answer to an older
    request can never land after a newer one (marked, then unmarked by a stale request still in flight)."""

    def __init__(self, kube: Kube, namespace: str, pod_name: str, retry_period: float):
        self.kube = kube
        self.namespace = namespace
        self.pod_name = pod_name
        self.retry_period = retry_period
        self._wanted = False
        self._applied: bool | None = None  # what the pod was last patched to; None: not yet known
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def want(self, leading: bool) -> None:
        self._wanted = leading
        self._settled.clear()
        self._changed.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())

    def _patch(self, leading: bool) -> bool:
        try:
            self.kube.merge_patch(PODS, self.namespace, self.pod_name, role_patch(leading))
        except KubeError as error:
            what = "mark" if leading else "unmark"
            if nothing_to_mark(error):
                log.warning("no pod %s/%s to %s as the leader's: not trying again", self.namespace, self.pod_name, what)
                return True
            log.warning("could not %s the pod %s/%s as the leader's: %s", what, self.namespace, self.pod_name, error)
            return False
        log.info(
            "pod %s/%s %s", self.namespace, self.pod_name, f"labelled {ROLE_LABEL}={LEADER}" if leading else "unmarked"
        )
        return True

    async def _run(self) -> None:
        delay = self.retry_period
        while True:
            self._changed.clear()
            wanted = self._wanted
            if self._applied == wanted:
                self._settled.set()
                await self._changed.wait()
                continue
            if await asyncio.to_thread(self._patch, wanted):
                self._applied = wanted
                delay = self.retry_period
                continue
            with contextlib.suppress(TimeoutError):  # a change of what we want tries again at once
                await asyncio.wait_for(self._changed.wait(), timeout=delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def stop(self, timeout: float) -> None:
        """Remove the mark (waiting at most ``timeout`` for the API server), then stop trying."""
        self.want(False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout=timeout)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
