"""One pod's life on this node (the kubelet's pod worker): volumes, containers, status, deletion.

A worker thread runs the pod: Pending while its volumes and env are set up (retried while a
ConfigMap or Secret is missing, as a kubelet does), init containers one after another, then the
containers together, restarted as restartPolicy says, Running, and finally Succeeded or Failed
with each container's exit code and termination message. When the pod gets a deletionTimestamp
its processes get SIGTERM, then SIGKILL after the grace period, the terminal status is written
and the object is removed (DELETE with gracePeriodSeconds=0, as a kubelet does once its
containers have stopped). The worker object outlives its thread until the pod is gone from the
API, so that a late event never starts a finished pod again.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import STRATEGIC_MERGE, ApiError, Client
from .container import Launch, NodeSettings, prepare_container
from .envvars import ConfigError
from .node import now
from .process import ContainerProcess, StartError
from .status import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    ContainerRecord,
    exit_reason,
    pod_status,
    termination_message,
)
from .volumes import PodVolumes, VolumeError

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
RESTART_BACKOFF_SECONDS = 1.0
TICK_SECONDS = 0.2
DEFAULT_GRACE_SECONDS = 30
MINIMUM_GRACE_SECONDS = 2.0
LOG_TAIL_BYTES = 16384


class _Stopping(Exception):
    """The agent is shutting down."""


@dataclass
class NodeContext:
    """What the agent shares with its pod workers."""

    api: Client
    node_name: str
    settings: NodeSettings
    workdir: Path
    pvc_root: Path
    stop_grace_seconds: float
    stopping: threading.Event = field(default_factory=threading.Event)

    def record_event(self, pod: dict[str, Any], type_: str, reason: str, message: str, container: str = "") -> None:
        """An Event on the pod, for `kubectl describe`; failing to record one never fails the pod."""
        metadata = pod["metadata"]
        stamp = now()
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "nodeagent", "host": self.node_name},
            "reportingComponent": "nodeagent",
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", body=event, timeout=5)
        except Exception as error:
            log.debug("could not record event %s on %s: %s", reason, metadata["name"], error)


def pod_directory(workdir: Path, pod: dict[str, Any]) -> Path:
    metadata = pod["metadata"]
    return workdir / "pods" / f"{metadata['namespace']}_{metadata['name']}_{metadata['uid']}"


def is_terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL


def is_deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def was_started(pod: dict[str, Any]) -> bool:
    """Whether a container of the pod already ran somewhere: then there is no process here to continue with."""
    status = pod.get("status") or {}
    statuses = [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]
    return status.get("phase") == RUNNING or any(
        "running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {}) for s in statuses
    )


class PodWorker:
    def __init__(self, node: NodeContext, pod: dict[str, Any]):
        metadata = pod["metadata"]
        self.node = node
        self.api = node.api
        self.pod = pod
        self.uid = metadata["uid"]
        self.namespace = metadata["namespace"]
        self.name = metadata["name"]
        self.directory = pod_directory(node.workdir, pod)
        self.finished = False
        self._gone = False
        self._deleted = False
        self._cleaned = False
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        spec = pod["spec"]
        self.init = [ContainerRecord(c["name"], c.get("image", "")) for c in spec.get("initContainers") or []]
        self.main = [ContainerRecord(c["name"], c.get("image", "")) for c in spec.get("containers") or []]
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self._conditions: list[dict[str, Any]] = (pod.get("status") or {}).get("conditions") or []
        self._volumes_ready = False
        self._volumes: PodVolumes | None = None
        self._launches: dict[str, Launch] = {}
        self._processes: dict[str, ContainerProcess] = {}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"PodWorker({self.namespace}/{self.name})"

    # -- the watch thread's side -------------------------------------------------------------

    def start(self) -> None:
        """Run the pod in a thread; a pod that is already over only needs its deletion finished."""
        if is_terminal(self.pod):
            self._finish()
            return
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True)
        self._thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self._changed.set()
        if self.finished:
            self._finalize()

    def gone(self, pod: dict[str, Any] | None = None) -> None:
        """The pod object no longer exists (``pod``: its last state, from the DELETED event)."""
        self.pod = pod or self.pod
        self._gone = True
        self._changed.set()
        if self.finished:
            self._finalize()

    def wake(self) -> None:
        self._changed.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def cleaned(self) -> bool:
        return self._cleaned

    # -- the pod's life ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if was_started(self.pod):
                self._report_lost()
            elif not self._deleting():
                self._run_pod()
        except _Stopping:
            pass
        except Exception as error:
            log.exception("pod %s/%s: the worker failed", self.namespace, self.name)
            self._kill(self._processes, 0)
            self._fail(f"the node agent failed: {type(error).__name__}: {error}")
        finally:
            self._kill(self._processes, 0)
            self._finish()

    def _run_pod(self) -> None:
        self._report(PENDING)
        self._volumes = PodVolumes(
            self.api, self.pod, self.directory / "volumes", self.node.pvc_root, self.node.settings.allocatable
        )
        if self._retry(self._volumes.prepare, self.main + self.init, "ContainerCreating", "FailedMount"):
            self._volumes_ready = True
            self._run_containers()
        self._report_terminal()

    def _run_containers(self) -> None:
        spec = self.pod["spec"]
        for record, container in zip(self.init, spec.get("initContainers") or [], strict=True):
            if not self._run_group([(record, container)], init=True) or record.exit_code != 0:
                return  # deleted, or failed for good (restartPolicy Never)
        self._run_group(list(zip(self.main, spec["containers"], strict=True)), init=False)

    def _run_group(self, group: list[tuple[ContainerRecord, dict[str, Any]]], init: bool) -> bool:
        """Run containers until each is over for good; False when the pod is deleted meanwhile."""
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        restart_at: dict[str, float] = {}
        for record, container in group:
            self._start(record, container)
            if record.exit_code is not None and _restarts(policy, record.exit_code, init):
                restart_at[record.name] = time.monotonic() + RESTART_BACKOFF_SECONDS
        self._report(self._phase())
        names = {record.name for record, _ in group}
        while True:
            running = {name: process for name, process in self._processes.items() if name in names}
            if self.node.stopping.is_set():
                self._kill(running, min(self._grace(), self.node.stop_grace_seconds))
                self._report_terminal(retries=1)
                raise _Stopping
            if self._deleting():
                self.node.record_event(self.pod, "Normal", "Killing", f"Stopping containers {sorted(running)}")
                self._kill(running, self._grace())
                return False
            self._refresh_tokens()
            changed = False
            for record, container in group:
                process = self._processes.get(record.name)
                if process is not None and (code := process.exit_code()) is not None:
                    self._record_exit(record, container, process, code)
                    changed = True
                    if _restarts(policy, code, init):
                        restart_at[record.name] = time.monotonic() + RESTART_BACKOFF_SECONDS
                elif process is None and time.monotonic() >= restart_at.get(record.name, float("inf")):
                    del restart_at[record.name]
                    self._start(record, container)
                    changed = True
                    if record.exit_code is not None and _restarts(policy, record.exit_code, init):
                        restart_at[record.name] = time.monotonic() + RESTART_BACKOFF_SECONDS
            if not any(name in self._processes for name in names) and not restart_at:
                return True
            if changed:
                self._report(self._phase())
            self._pause(TICK_SECONDS)

    def _start(self, record: ContainerRecord, container: dict[str, Any]) -> None:
        """Start one container; on a start error its record says so (terminated, exit code 128)."""
        directory = self.directory / "containers" / container["name"]
        log_path = self.directory / "logs" / f"{container['name']}.log"

        def prepare() -> None:
            assert self._volumes is not None
            self._launches[record.name] = prepare_container(
                self.pod, container, self._volumes.paths, directory, log_path, self._lookup, self.node.settings
            )

        try:
            if not self._retry(prepare, [record], "CreateContainerConfigError", "Failed", catch=(ConfigError, OSError)):
                return
            launch = self._launches[record.name]
            process = ContainerProcess.spawn(launch.argv, launch.env, launch.cwd, launch.log)
        except StartError as error:
            stamp = now()
            record.terminated(128, "StartError", str(error), stamp, stamp)
            self.node.record_event(self.pod, "Warning", "Failed", str(error), record.name)
            return
        self._processes[record.name] = process
        record.started(process.pid, process.started_at)
        self.node.record_event(self.pod, "Normal", "Started", f"Started container {record.name}", record.name)

    def _record_exit(self, record: ContainerRecord, container: dict[str, Any], process, code: int) -> None:
        self._processes.pop(record.name, None)
        launch = self._launches[record.name]
        written = ""
        with contextlib.suppress(OSError):
            written = launch.termination_log.read_text(errors="replace")
        policy = container.get("terminationMessagePolicy") or "File"
        message = termination_message(written, policy, code, _tail(launch.log))
        record.terminated(code, exit_reason(code), message, process.started_at, now())

    def _kill(self, processes: dict[str, ContainerProcess], grace: float) -> None:
        """SIGTERM to each process group, SIGKILL to what is left after ``grace`` seconds; exits recorded."""
        if not processes:
            return
        for process in processes.values():
            process.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.popen.poll() is None for p in processes.values()):
            time.sleep(0.05)
        containers = {c["name"]: c for c in self.pod["spec"].get("containers") or []}
        containers.update({c["name"]: c for c in self.pod["spec"].get("initContainers") or []})
        records = {record.name: record for record in self.init + self.main}
        for name, process in list(processes.items()):
            process.signal_group(signal.SIGKILL)
            process.popen.wait()
            self._record_exit(records[name], containers[name], process, process.exit_code() or 0)

    # -- status ------------------------------------------------------------------------------

    def _phase(self) -> str:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        if any(record.exit_code != 0 for record in self.init):
            failed_for_good = policy == "Never" and any(r.exit_code not in (None, 0) for r in self.init)
            return FAILED if failed_for_good else PENDING
        if any(record.running for record in self.main):
            return RUNNING
        if all(record.exit_code is not None for record in self.main) and policy != "Always":
            if all(record.exit_code == 0 for record in self.main):
                return SUCCEEDED
            return FAILED if policy == "Never" else RUNNING
        return RUNNING if any(record.exit_code is not None for record in self.main) else PENDING

    def _terminal_phase(self) -> str:
        """After the last process has stopped: what it all came to."""
        return SUCCEEDED if all(record.exit_code == 0 for record in self.init + self.main) else FAILED

    def _report_terminal(self, retries: int = 5) -> None:
        self._report(self._terminal_phase(), retries=retries)

    def _fail(self, message: str) -> None:
        """A bug in the agent fails the pod rather than leaving it Pending or Running for ever."""
        for record in self.init + self.main:
            if record.exit_code is None:
                record.terminated(128, "StartError", message, None, now())
        self._report_terminal(retries=2)

    def _report_lost(self) -> None:
        """The pod ran under an earlier agent: its processes are gone, so it failed, as a kubelet reports it."""
        previous = {s["name"]: s for s in (self.pod.get("status") or {}).get("containerStatuses") or []}
        stamp = now()
        for record in self.main:
            state = (previous.get(record.name) or {}).get("state") or {}
            if "terminated" in state:
                record.state = state
                continue
            started_at = (state.get("running") or {}).get("startedAt")
            record.terminated(
                137, "ContainerStatusUnknown", "The container could not be located when the pod was terminated",
                started_at, stamp,
            )  # fmt: skip
        self.init = []
        self._report(FAILED, retries=5)

    def _report(self, phase: str, retries: int = 0) -> None:
        status = pod_status(phase, self.init, self.main, self.start_time, self._conditions, self._volumes_ready)
        self._conditions = status["conditions"]
        body = {"metadata": {"uid": self.uid}, "status": status}
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        for attempt in range(retries + 1):
            try:
                self.api.request("PATCH", path, body=body, content_type=STRATEGIC_MERGE)
                return
            except ApiError as error:
                if error.status in (404, 409):  # gone, or replaced by a pod of the same name
                    log.debug("pod %s/%s: status not written: %s", self.namespace, self.name, error)
                    return
                if error.status == 422:  # the API server refuses the status itself: retrying will not help
                    log.warning("pod %s/%s: status %s refused: %s", self.namespace, self.name, phase, error)
                    return
                failure: Exception = error
            except Exception as error:
                failure = error
            if attempt < retries:
                time.sleep(1.0)
        log.warning("pod %s/%s: could not write status %s: %s", self.namespace, self.name, phase, failure)

    # -- deletion and clean-up -----------------------------------------------------------------

    def _finish(self) -> None:
        with self._lock:
            self.finished = True
        self._finalize()

    def _finalize(self) -> None:
        with self._lock:
            delete = is_deleting(self.pod) and not self._deleted and not self._gone
            self._deleted = self._deleted or delete
            clean = self._gone and not self._cleaned
            self._cleaned = self._cleaned or clean
        if delete:
            self._delete_object()
        if clean:
            self._clean_up()

    def _delete_object(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body=body, timeout=10)
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("pod %s/%s: could not delete: %s", self.namespace, self.name, error)
                with self._lock:
                    self._deleted = False  # the next resync tries again
        except Exception as error:
            log.warning("pod %s/%s: could not delete: %s", self.namespace, self.name, error)
            with self._lock:
                self._deleted = False

    def _clean_up(self) -> None:
        """Volumes and rootfs go with the pod (secrets, tokens, emptyDirs); its logs stay for people."""
        shutil.rmtree(self.directory / "volumes", ignore_errors=True)
        for rootfs in self.directory.glob("containers/*/rootfs"):
            shutil.rmtree(rootfs, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------

    def _deleting(self) -> bool:
        return self._gone or is_deleting(self.pod)

    def _grace(self) -> float:
        """The deletion's grace period, else the pod's; never under the kubelet's minimum of 2 s."""
        metadata, spec = self.pod["metadata"], self.pod["spec"]
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return max(MINIMUM_GRACE_SECONDS, float(DEFAULT_GRACE_SECONDS if grace is None else grace))

    def _pause(self, seconds: float) -> None:
        self._changed.wait(seconds)
        self._changed.clear()
        if self.node.stopping.is_set() and not self._processes:
            raise _Stopping

    def _retry(self, step, records: list[ContainerRecord], reason: str, event: str, catch=VolumeError) -> bool:
        """Run ``step`` until it succeeds (True) or the pod is deleted first (False), showing why it waits."""
        while True:
            if self._deleting():
                return False
            try:
                step()
                return True
            except catch as error:
                message = str(error)
                for record in records:
                    record.waiting(reason, message)
                if message not in self._warned:
                    self._warned.add(message)
                    log.info("pod %s/%s: %s", self.namespace, self.name, message)
                    self.node.record_event(self.pod, "Warning", event, message)
                    self._report(self._phase())
            self._pause(RETRY_SECONDS)

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.get(f"/api/v1/namespaces/{namespace}/{kind.lower()}s/{name}")

    def _refresh_tokens(self) -> None:
        if self._volumes is None:
            return
        try:
            self._volumes.refresh_tokens()
        except Exception as error:  # the old token is still valid for a fifth of its life: retried next tick
            log.warning("pod %s/%s: could not refresh a projected token: %s", self.namespace, self.name, error)


def _restarts(policy: str, exit_code: int, init: bool) -> bool:
    if policy == "Never":
        return False
    if policy == "OnFailure" or init:
        return exit_code != 0
    return True


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
