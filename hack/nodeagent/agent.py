"""LocalNodeAgent: registers the node, keeps it Ready, and gives each pod bound to it a PodWorker."""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .client import ApiError, Client
from .container import NodeSettings
from .node import NodeHeartbeat, machine_capacity
from .pod import NodeContext, PodWorker

log = logging.getLogger(__name__)

DEFAULT_NODE_NAME = "local-cpu-0"
WATCH_SECONDS = 30
RESYNC_SECONDS = 60.0
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


class LocalNodeAgent:
    """A node of the cluster whose pods run as local processes. ``start()`` returns once the node is schedulable.

    kubeconfig: credentials that may manage nodes, leases, pods and their status, and request tokens
    node_name: the Node to register (taken over if it exists)
    workdir: pod directories (volumes, rootfs links, logs) live under ``workdir/pods``
    bin_dir: first on every container's PATH (default: the directory of this Python, so ``python``
        and ``accelerate`` are this environment's)
    pvc_root: where claims without a hostPath/local PersistentVolume live (default ``workdir/pvc``)
    env: extra environment for every container (the pod's own env wins)
    ready_timeout: how long start() waits for the node to become schedulable (0: not at all)
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        node_name: str = DEFAULT_NODE_NAME,
        workdir: str | Path | None = None,
        *,
        bin_dir: str | Path | None = None,
        pvc_root: str | Path | None = None,
        env: dict[str, str] | None = None,
        max_pods: int = 16,
        lease_seconds: int = 40,
        renew_seconds: float = 5.0,
        stop_grace_seconds: float = 5.0,
        path_hook: bool = True,
        ready_timeout: float = 60.0,
    ):
        self.kubeconfig = Path(kubeconfig)
        self.node_name = node_name
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nodeagent-"))
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.pvc_root = Path(pvc_root) if pvc_root else self.workdir / "pvc"
        self.env = dict(env or {})
        self.max_pods = max_pods
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.path_hook = path_hook
        self.ready_timeout = ready_timeout
        self.api: Client | None = None
        self._heartbeat: NodeHeartbeat | None = None
        self._node: NodeContext | None = None
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> LocalNodeAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalNodeAgent:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api = Client(self.kubeconfig)
        try:
            capacity = machine_capacity(self.workdir, self.max_pods)
            self._heartbeat = NodeHeartbeat(
                self.api, self.node_name, capacity, lease_seconds=self.lease_seconds, renew_seconds=self.renew_seconds
            )
            self._heartbeat.start()
            settings = NodeSettings(self.bin_dir, self.api.server, capacity, self.env, self.path_hook)
            self._node = NodeContext(
                self.api, self.node_name, settings, self.workdir, self.pvc_root, self.stop_grace_seconds
            )
            resource_version = self._relist()
            self._watcher = threading.Thread(
                target=self._watch, args=(resource_version,), name=f"watch-{self.node_name}", daemon=True
            )
            self._watcher.start()
            self._wait_until_schedulable()
        except BaseException:
            self.stop()
            raise
        log.info("node %s is up; pods run under %s", self.node_name, self.workdir / "pods")
        return self

    def stop(self) -> None:
        """Stop every pod's processes (SIGTERM, then SIGKILL after stop_grace_seconds) and the heartbeat."""
        if self._node is not None:
            self._node.stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake()
        for worker in workers:
            worker.join(self.stop_grace_seconds + 10)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.api is not None:
            self.api.close()
        if self._watcher is not None:
            self._watcher.join(2)

    # -- for people and tests ----------------------------------------------------------------

    def pod_directory(self, namespace: str, name: str) -> Path | None:
        """The work directory of the newest pod of that name (volumes, containers/<name>/rootfs, logs)."""
        found = sorted((self.workdir / "pods").glob(f"{namespace}_{name}_*"), key=lambda path: path.stat().st_mtime)
        return found[-1] if found else None

    def log_path(self, namespace: str, name: str, container: str) -> Path | None:
        directory = self.pod_directory(namespace, name)
        return directory / "logs" / f"{container}.log" if directory else None

    # -- pods --------------------------------------------------------------------------------

    @property
    def _selector(self) -> list[tuple[str, str]]:
        return [("fieldSelector", f"spec.nodeName={self.node_name}")]

    def _relist(self) -> str:
        assert self.api is not None
        listing = self.api.request("GET", "/api/v1/pods", query=self._selector)
        seen = set()
        for pod in listing.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._dispatch("ADDED", pod)
        with self._lock:
            missing = [worker for uid, worker in self._workers.items() if uid not in seen]
        for worker in missing:
            worker.gone()
        self._prune()
        return listing["metadata"]["resourceVersion"]

    def _watch(self, resource_version: str | None) -> None:
        """Watch this node's pods; relist on errors, on an expired resourceVersion, and every RESYNC_SECONDS."""
        assert self.api is not None and self._node is not None
        listed_at = time.monotonic()
        while not self._node.stopping.is_set():
            try:
                if resource_version is None or time.monotonic() - listed_at > RESYNC_SECONDS:
                    resource_version, listed_at = self._relist(), time.monotonic()
                query = [*self._selector, ("resourceVersion", resource_version)]
                for event in self.api.watch("/api/v1/pods", query, WATCH_SECONDS):
                    if self._node.stopping.is_set():
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # our resourceVersion is too old: list again
                            resource_version = None
                            break
                        raise ApiError(obj.get("code", 0), obj.get("reason", ""), obj.get("message", ""))
                    resource_version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._dispatch(kind, obj)
            except Exception as error:
                if self._node.stopping.is_set():
                    return
                log.warning("watching the pods of %s failed (listing again): %s", self.node_name, error)
                resource_version = None
                self._node.stopping.wait(1.0)

    def _dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        assert self._node is not None
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None and kind != "DELETED" and not self._node.stopping.is_set():
                worker = self._workers[uid] = PodWorker(self._node, pod)
                new = True
            else:
                new = False
        if worker is None:
            return
        if new:
            worker.start()
        elif kind == "DELETED":
            worker.gone(pod)
            self._prune()
        else:
            worker.update(pod)

    def _prune(self) -> None:
        with self._lock:
            for uid in [uid for uid, worker in self._workers.items() if worker.cleaned]:
                del self._workers[uid]

    def _wait_until_schedulable(self) -> None:
        """Until the node lifecycle controller has seen it Ready and lifted the not-ready taint."""
        assert self.api is not None
        if self.ready_timeout <= 0:
            return
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            node = self.api.get(f"/api/v1/nodes/{self.node_name}") or {}
            taints = [t.get("key") for t in (node.get("spec") or {}).get("taints") or []]
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or []
            )
            if ready and NOT_READY_TAINT not in taints:
                return
            time.sleep(0.5)
        log.warning("node %s is still tainted %s after %.0fs", self.node_name, NOT_READY_TAINT, self.ready_timeout)
