"""A real Kubernetes control plane on loopback, for tests and local development.

etcd, kube-apiserver (TLS, token authentication, RBAC, ServiceAccount token issuing),
kube-controller-manager (Jobs, garbage collection, namespaces, ServiceAccounts), kube-scheduler
and kwok (simulated nodes and pod lifecycles), all built from Go modules by
hack/build-binaries.sh. Nothing is mocked: the operator under test talks to the same API server
code as production clusters run.

Child processes die with the process that started them (PR_SET_PDEATHSIG), so an interrupted
test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import pki

HACK = Path(__file__).resolve().parent.parent
REPO = HACK.parent
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

GPU_NODES = 3
GPUS_PER_NODE = 8


class ClusterError(RuntimeError):
    pass


def build_binaries(*components: str) -> dict[str, Path]:
    """Build (or find in the cache) the binaries; returns component -> directory."""
    result = subprocess.run([str(HACK / "build-binaries.sh"), *components], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"hack/build-binaries.sh {' '.join(components)} failed:\n{result.stderr[-4000:]}")
    dirs = {}
    for line in result.stdout.splitlines():
        name, _, path = line.partition("=")
        dirs[name] = Path(path)
    return dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGKILL to this child when its parent exits, however it exits.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalCluster:
    """Start with ``start()`` (or as a context manager); ``kubeconfig`` is the admin kubeconfig."""

    workdir: Path | None = None
    die_with_parent: bool = True
    gpu_nodes: int = GPU_NODES
    # An audit policy (YAML, see metadata_audit_policy) turns on kube-apiserver's audit log, at ``audit_log``:
    # which requests each client made, with their URLs (selectors included). Written before each response
    # (blocking mode).
    audit_policy: str | None = None
    processes: list[Process] = field(default_factory=list)
    _own_workdir: bool = False

    def __post_init__(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fto-cluster-"))
            self._own_workdir = True
        self.workdir = Path(self.workdir)
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.admin_token = secrets.token_hex(16)
        self.api_port = 0
        self.server = ""
        self.bins: dict[str, Path] = {}

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        self.bins = build_binaries("kubernetes", "etcd", "kwok")
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._create_nodes()
            self._wait_for_default_service_account()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self._own_workdir and self.workdir and os.environ.get("FTO_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self) -> dict:
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "workdir": str(self.workdir),
            "pids": {p.name: p.popen.pid for p in self.processes},
        }

    # -- helpers -----------------------------------------------------------------------------

    def binary(self, component: str, name: str) -> str:
        return str(self.bins[component] / name)

    @property
    def kubectl(self) -> str:
        return self.binary("kubernetes", "kubectl")

    def run_kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def install_crds(self, directory: Path = REPO / "crds") -> None:
        """The CRDs in ``directory`` applied, and every one of them Established: waiting on the files, not on a
        list of names, which drifted from the directory in each copy of it (FineTuneModel was left out)."""
        self.run_kubectl("apply", "--server-side", "-f", str(directory))
        self.run_kubectl("wait", "--for=condition=Established", "-f", str(directory), "--timeout=60s")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
        )
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait(self, what: str, probe, timeout: float, process: Process | None = None) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process is not None and process.popen.poll() is not None:
                raise ClusterError(f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}")
            try:
                if probe():
                    return
            except Exception as error:  # the probe's failures are the waiting
                last_error = error
            time.sleep(0.2)
        tail = process.tail() if process else ""
        raise ClusterError(f"timed out after {timeout}s waiting for {what}: {last_error}\n{tail}")

    def _https_get(self, path: str) -> int:
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        request = urllib.request.Request(
            f"{self.server}{path}", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    # -- components --------------------------------------------------------------------------

    def _write_pki(self) -> None:
        ca = pki.write_ca(self.pki_dir)
        pki.write_serving_cert(self.pki_dir, "apiserver", ca, [*pki.API_SERVER_NAMES, *pki.API_SERVER_IPS])
        pki.write_service_account_keys(self.pki_dir)
        # A static token in system:masters for the admin; operators under test get ServiceAccount tokens.
        (self.pki_dir / "tokens.csv").write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        process = self.spawn(
            "etcd",
            [
                self.binary("etcd", "etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return json.loads(response.read()).get("health") == "true"

        self._wait("etcd", healthy, 30, process)

    def _start_apiserver(self) -> None:
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        p = self.pki_dir
        process = self.spawn(
            "kube-apiserver",
            [
                self.binary("kubernetes", "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--token-auth-file={p / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *self._audit_flags(),
            ],
        )
        self._wait("kube-apiserver /readyz", lambda: self._https_get("/readyz") == 200, 90, process)

    def _audit_flags(self) -> list[str]:
        if self.audit_policy is None:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(self.audit_policy)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def service_account_kubeconfig(self, namespace: str, name: str, cluster_role: str = "cluster-admin") -> Path:
        """A kubeconfig of a new ServiceAccount bound to ``cluster_role``: a client of its own, told apart in
        the audit log as system:serviceaccount:<namespace>:<name>."""
        self.run_kubectl("create", "serviceaccount", name, "-n", namespace)
        self.run_kubectl(
            "create",
            "clusterrolebinding",
            f"{namespace}-{name}",
            f"--clusterrole={cluster_role}",
            f"--serviceaccount={namespace}:{name}",
        )
        token = self.run_kubectl("create", "token", name, "-n", namespace, "--duration=6h").stdout.strip()
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": name, "user": {"token": token}}]
        config["contexts"] = [{"name": "fto-test", "context": {"cluster": "fto-test", "user": name}}]
        path = self.workdir / f"{namespace}-{name}.kubeconfig"
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def audit_events(self, offset: int = 0) -> tuple[list[dict], int]:
        """The audit log's events from byte ``offset`` on, and the offset after the last whole line."""
        if not self.audit_log.exists():
            return [], offset
        with self.audit_log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        whole, _, _ = data.rpartition(b"\n")
        events = [json.loads(line) for line in whole.splitlines() if line.strip()]
        return events, offset + len(whole) + (1 if whole else 0)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "fto-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki_dir / "ca.crt")},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.admin_token}}],
            "contexts": [{"name": "fto-test", "context": {"cluster": "fto-test", "user": "admin"}}],
            "current-context": "fto-test",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _start_controller_manager(self) -> None:
        p = self.pki_dir
        self.spawn(
            "kube-controller-manager",
            [
                self.binary("kubernetes", "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route,-attachdetach,-persistentvolume-expander,-ephemeral-volume",
                "--concurrent-job-syncs=5",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        self.spawn(
            "kube-scheduler",
            [
                self.binary("kubernetes", "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        self.spawn(
            "kwok",
            [
                self.binary("kwok", "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={HACK / 'kwok' / 'stages.yaml'}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
                "--cidr=10.244.0.0/16",
            ],
        )

    def _create_nodes(self) -> None:
        nodes = [gpu_node(f"gpu-{i}") for i in range(self.gpu_nodes)] + [cpu_node("cpu-0")]
        self.run_kubectl(
            "apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
        )

        def ready() -> bool:
            out = self.run_kubectl("get", "nodes", "-o", "json").stdout
            items = json.loads(out)["items"]
            fake = [n for n in items if n["metadata"].get("annotations", {}).get(KWOK_NODE_ANNOTATION) == "fake"]
            return len(fake) == len(nodes) and all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
                for n in fake
            )

        self._wait("simulated nodes to be Ready", ready, 60, self.processes[-1])

    def _wait_for_default_service_account(self) -> None:
        cm = next(p for p in self.processes if p.name == "kube-controller-manager")
        self._wait(
            "the default ServiceAccount",
            lambda: self.run_kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            60,
            cm,
        )


def metadata_audit_policy(*, users: list[str] | None = None, groups: list[str] | None = None) -> str:
    """An audit policy for ``LocalCluster(audit_policy=...)``: the metadata of every request by ``users`` or by
    members of ``groups``, nothing of anyone else's (the control plane's own requests would swamp the log)."""
    who: dict[str, list[str]] = {}
    if users:
        who["users"] = users
    if groups:
        who["userGroups"] = groups
    if not who:
        raise ValueError("an audit policy needs users or groups to log")
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", **who}, {"level": "None"}],
    }
    return json.dumps(policy)  # JSON is YAML


def gpu_node(name: str) -> dict:
    """A simulated node of an NVIDIA GPU pool: labelled and tainted as GPU operators and cloud pools do."""
    resources = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "node.kubernetes.io/instance-type": "gpu-8xh100",
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }


def cpu_node(name: str, cpu: str = "32", memory: str = "128Gi", pods: int = 110) -> dict:
    """A simulated node without GPUs (the operator-scale benchmark packs someone else's pods onto big ones)."""
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": resources, "allocatable": resources},
    }
