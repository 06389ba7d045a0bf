"""The OpenAI-compatible API (python -m finetune_operator.openai_api) as a local process against the test
control plane, the way the chart runs it: HTTPS with a certificate of its own CA, as the chart's ServiceAccount
with the chart's RBAC (rendered by helm, so whoever uses this also proves those rules are enough), and tenants
that call it with ServiceAccount tokens bound by a namespace Role, as a platform admin would set them up.
Used by the e2e test of the API and by make demo."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from finetune_operator.certificates import make_ca, make_serving_certificate

from .cluster import REPO, LocalCluster, build_binaries, free_port

CHART = REPO / "charts" / "finetune-operator"
# What a tenant user may do in their own namespace: the FineTuneJobs and ModelAdapters there, nothing else.
TENANT_RULES = [
    {
        "apiGroups": ["finetune.dev"],
        "resources": ["finetunejobs", "modeladapters"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    }
]


def apply_all(cluster: LocalCluster, documents: list[dict]) -> None:
    """One kubectl call for many objects: each call costs the CLI's start-up, ~0.5 s on a loaded machine."""
    cluster.run_kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))


def chart_identity(cluster: LocalCluster, namespace: str, directory: Path) -> tuple[Path, list[tuple[str, str]]]:
    """In the existing ``namespace``: the API's ServiceAccount, ClusterRole and ClusterRoleBinding exactly as
    the chart renders them; a kubeconfig with that ServiceAccount's token, and the cluster-scoped objects made
    (kind, name) for whoever removes them."""
    helm = build_binaries("helm")["helm"] / "helm"
    values = {
        "openaiApi": {
            "enabled": True,
            "tls": {"secretName": "tls"},
            "files": {"uri": "s3://files/", "credentialsSecret": "keys"},
        }
    }
    rendered = subprocess.run(
        [str(helm), "template", "fto", str(CHART), "--namespace", namespace, "--values", "-"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    identity = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc
        and doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
        and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "openai-api"
    ]
    apply_all(cluster, identity)
    account = next(d for d in identity if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = cluster.run_kubectl("create", "token", account, "-n", namespace, "--duration=24h").stdout.strip()
    kubeconfig = directory / "api.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki_dir / "ca.crt")},
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "api", "context": {"cluster": "local", "user": account}}],
                "current-context": "api",
            }
        )
    )
    kubeconfig.chmod(0o600)
    cluster_objects = [(d["kind"].lower(), d["metadata"]["name"]) for d in identity if d["kind"] != "ServiceAccount"]
    return kubeconfig, cluster_objects


def tenant_token(cluster: LocalCluster, namespace: str, account: str = "app", duration: str = "30m") -> str:
    """In the existing ``namespace``: a ServiceAccount bound to a Role on its FineTuneJobs and ModelAdapters
    (a tenant user, never admin); a token of it."""
    apply_all(
        cluster,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "finetune-user", "namespace": namespace},
                "rules": TENANT_RULES,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": account, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetune-user"},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        ],
    )
    return cluster.run_kubectl("create", "token", account, "-n", namespace, f"--duration={duration}").stdout.strip()


class OpenAIApiProcess:
    """``start()`` writes a CA and a serving certificate for 127.0.0.1, the files location's keys, and runs
    the API until ``stop()``; ``url`` is its base URL (…/v1) and ``ca_file`` the CA a client verifies it with."""

    def __init__(
        self, kubeconfig: Path, workdir: Path, files_uri: str, files_credentials: dict[str, str], *args: str
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.files_uri = files_uri
        self.args = list(args)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/v1"
        self.ca_file = workdir / "ca.crt"
        self.log_path = workdir / "api.log"
        self.process: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        ca = make_ca("local openai-api CA")
        serving = make_serving_certificate(ca, "openai-api", ["127.0.0.1", "localhost"])
        self.ca_file.write_bytes(ca.certificate_pem)
        (workdir / "tls.crt").write_bytes(serving.certificate_pem)
        key = workdir / "tls.key"
        key.write_bytes(serving.key_pem)
        key.chmod(0o600)
        self.credentials_dir = workdir / "files-credentials"
        self.credentials_dir.mkdir(exist_ok=True)
        for name, value in files_credentials.items():
            (self.credentials_dir / name).write_text(value)

    def start(self, timeout: float = 60) -> OpenAIApiProcess:
        return self.launch().wait(timeout)

    def launch(self) -> OpenAIApiProcess:
        """Start the process without waiting for it: its start-up (imports, the TLS context) overlaps the caller's."""
        argv = [
            sys.executable,
            "-m",
            "finetune_operator.openai_api",
            f"--kubeconfig={self.kubeconfig}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--tls-cert-file={self.workdir / 'tls.crt'}",
            f"--tls-key-file={self.workdir / 'tls.key'}",
            f"--files-uri={self.files_uri}",
            f"--files-credentials-dir={self.credentials_dir}",
            *self.args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ, start_new_session=True
            )
        return self

    def wait(self, timeout: float = 60) -> OpenAIApiProcess:
        """Until it answers HTTPS (an unauthenticated request: 401)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited with {self.process.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/models", context=context, timeout=2).close()
            except urllib.error.HTTPError as error:
                if error.code == 401:  # listening, and checking tokens
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not listen within {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
