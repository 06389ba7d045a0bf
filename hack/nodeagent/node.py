"""The Node object and its heartbeat: registration, status, and a Lease in kube-node-lease.

The node lifecycle controller marks a node NotReady (and evicts its pods) when neither its Lease
nor its Ready condition has been renewed within the node monitor grace period (40 s by default);
the heartbeat renews the Lease every few seconds and the status now and then, as a kubelet does.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .client import MERGE, STRATEGIC_MERGE, ApiError, Client
from .envvars import POD_IP

log = logging.getLogger(__name__)

NODE_LABEL = "finetune.dev/local-node"
NODE_TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
LEASE_NAMESPACE = "kube-node-lease"
RUNTIME_VERSION = "nodeagent://0.1.0"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def machine_capacity(workdir: Path, max_pods: int) -> dict[str, str]:
    """This machine's CPUs, memory and disk: what the scheduler may place here. No GPUs."""
    memory_kib = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "ephemeral-storage": str(shutil.disk_usage(workdir).total),
        "pods": str(max_pods),
    }


def build_node(name: str) -> dict[str, Any]:
    architecture = _ARCHITECTURES.get(platform.machine(), platform.machine())
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": architecture,
                NODE_LABEL: "true",
            },
        },
        "spec": {"taints": [NODE_TAINT]},
    }


def node_status(name: str, capacity: dict[str, str], kubelet_version: str, since: str) -> dict[str, Any]:
    """``since``: when this agent registered the node, the conditions' lastTransitionTime."""
    stamp = now()

    def condition(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": since,
        }

    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "memory is not watched"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "disk is not watched"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "processes are not counted"),
            condition("Ready", "True", "KubeletReady", "the finetune node agent runs this node's pods"),
        ],
        "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": name}],
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": f"{platform.system()} (finetune node agent on {socket.gethostname()})",
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
        },
    }


def build_lease(name: str, node_uid: str, duration_seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_seconds, "renewTime": now_micro()},
    }


class NodeHeartbeat:
    """Registers the node, then renews its Lease every ``renew_seconds`` and its status every ``status_seconds``."""

    def __init__(
        self,
        api: Client,
        name: str,
        capacity: dict[str, str],
        lease_seconds: int = 40,
        renew_seconds: float = 5.0,
        status_seconds: float = 30.0,
    ):
        self.api = api
        self.name = name
        self.capacity = capacity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.status_seconds = status_seconds
        self.kubelet_version = "v0.0.0"
        self._node_uid = ""
        self._since = now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    @property
    def node_path(self) -> str:
        return f"/api/v1/nodes/{self.name}"

    @property
    def lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"

    def start(self) -> None:
        self.kubelet_version = self.api.request("GET", "/version").get("gitVersion", self.kubelet_version)
        self.register()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def register(self) -> None:
        """Create the node, or take an existing one of that name over: labels and taint restored, status renewed."""
        wanted = build_node(self.name)
        existing = self.api.get(self.node_path)
        if existing is None:
            try:
                existing = self.api.request("POST", "/api/v1/nodes", body=wanted)
            except ApiError as error:
                if error.status != 409:
                    raise
                existing = self.api.request("GET", self.node_path)
        taints = existing.get("spec", {}).get("taints") or []
        if NODE_TAINT not in taints:
            taints = [*taints, NODE_TAINT]
        patch = {"metadata": {"labels": wanted["metadata"]["labels"]}, "spec": {"taints": taints}}
        existing = self.api.request("PATCH", self.node_path, body=patch, content_type=MERGE)
        self._node_uid = existing["metadata"]["uid"]
        self.report_status()
        self.renew_lease()

    def report_status(self) -> None:
        status = node_status(self.name, self.capacity, self.kubelet_version, self._since)
        self.api.request("PATCH", self.node_path + "/status", body={"status": status}, content_type=STRATEGIC_MERGE)

    def renew_lease(self) -> None:
        patch = {"spec": {"holderIdentity": self.name, "renewTime": now_micro()}}
        try:
            self.api.request("PATCH", self.lease_path, body=patch, content_type=MERGE)
        except ApiError as error:
            if error.status != 404:
                raise
            lease = build_lease(self.name, self._node_uid, self.lease_seconds)
            self.api.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body=lease)

    def _run(self) -> None:
        since_status = 0.0
        while not self._stop.wait(self.renew_seconds):
            try:
                since_status += self.renew_seconds
                if since_status >= self.status_seconds:
                    since_status = 0.0
                    self.report_status()
                self.renew_lease()
            except ApiError as error:
                if error.status == 404:  # someone deleted the node: register it again, as a kubelet does
                    self._reregister()
                else:
                    log.warning("node heartbeat failed: %s", error)
            except Exception as error:  # the API server may be briefly away; the next beat tries again
                log.warning("node heartbeat failed: %s", error)

    def _reregister(self) -> None:
        try:
            self.register()
        except Exception as error:
            log.warning("could not register node %s again: %s", self.name, error)
