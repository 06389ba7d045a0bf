"""Kueue's controller manager, built from Go modules, started against the local control plane.

What differs from a production install (the Helm chart or the release manifests), and why:

- No admission webhooks are registered. Kueue's webhooks default and validate Kueue objects and
  suspend new queued Jobs; the API server here could reach a loopback webhook, but the tests must
  show what Kueue's controllers do with our Jobs, and the operator already creates queued Jobs
  suspended. Without the webhooks nothing rejects a malformed Kueue object: the tests write valid ones.
- The webhook server's certificate is ours, not the cert rotator's. Kueue's internal certificate
  management stores a CA and a serving certificate in a Secret and expects the kubelet to mount that
  Secret into its certificate directory; with no kubelet for the manager, this module writes the same
  certificate to the Secret and to the directory, so the rotator finds it valid and leaves it alone.
  (Turning internal certificate management off is no way out in v0.17: the manager then reads its
  metrics certificate from the fixed path /etc/kueue/metrics/certs.)
- The CRDs' conversion webhook points at the manager on loopback (the rotator insists on injecting
  its CA bundle into it); v1beta2 is both the storage version and the one everything here uses.
- One replica, no leader election, metrics off, the visibility API off (it is an aggregated API
  server, which needs the API server's front proxy; not set up here).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from . import pki
from .cluster import ClusterError, LocalCluster, Process, build_binaries, free_port

NAMESPACE = "kueue-system"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
# The rotator checks its CA against this DNS name (cert-controller's CAName, set by Kueue).
CA_NAME = "kueue-ca"
API = "kueue.x-k8s.io/v1beta2"


@dataclass
class KueueController:
    """Start with ``start()`` (or as a context manager) once the cluster is up."""

    cluster: LocalCluster
    pods_ready_timeout_seconds: int = 300
    process: Process | None = None
    _dirs: dict[str, Path] = field(default_factory=dict)

    def __enter__(self) -> KueueController:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> KueueController:
        build = build_binaries("kueue")["kueue"]
        workdir = Path(self.cluster.workdir) / "kueue"
        cert_dir = workdir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        self.webhook_port, self.health_port = free_port(), free_port()
        ca, serving = _certificates()
        pki._write(cert_dir / "tls.crt", serving.certificate_pem)
        pki._write(cert_dir / "tls.key", serving.key_pem, private=True)
        self._install_crds(build / "crds", ca.certificate_pem)
        self._install_secret(ca, serving)
        config = workdir / "config.yaml"
        config.write_text(json.dumps(self._configuration(cert_dir), indent=2))
        self.process = self.cluster.spawn(
            "kueue",
            [str(build / "kueue"), f"--config={config}", "--zap-log-level=2"],
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        )
        try:
            self.cluster._wait("Kueue's /readyz", self._ready, 120, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            if self.process in self.cluster.processes:
                self.cluster.processes.remove(self.process)
            self.process = None

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
            return response.status == 200

    def _configuration(self, cert_dir: Path) -> dict:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "manageJobsWithoutQueueName": False,
            "leaderElection": {"leaderElect": False},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(cert_dir)},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": WEBHOOK_SERVICE,
                "webhookSecretName": WEBHOOK_SECRET,
            },
            "integrations": {"frameworks": ["batch/job"]},
            # All-or-nothing start of multi-node jobs: an admitted job whose pods are not all ready in time is
            # evicted and requeued, never left half-started.
            "waitForPodsReady": {"timeout": f"{self.pods_ready_timeout_seconds}s", "blockAdmission": False},
            "featureGates": {"VisibilityOnDemand": False},
        }

    def _install_crds(self, directory: Path, ca_pem: bytes) -> None:
        import base64

        crds = []
        for path in sorted(directory.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if len(crd["spec"]["versions"]) > 1:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "conversionReviewVersions": ["v1"],
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{self.webhook_port}/convert",
                            "caBundle": base64.b64encode(ca_pem).decode(),
                        },
                    },
                }
            crds.append(crd)
        apply(self.cluster, *crds)
        names = {crd["metadata"]["name"] for crd in crds}

        def established() -> bool:
            # Polled rather than `kubectl wait`, which fails on a CRD whose status has no conditions yet.
            listed = json.loads(self.cluster.run_kubectl("get", "crd", "-o", "json").stdout)["items"]
            return names <= {
                crd["metadata"]["name"]
                for crd in listed
                if any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in crd.get("status", {}).get("conditions", [])
                )
            }

        self.cluster._wait("Kueue's CRDs to be established", established, 60)

    def _install_secret(self, ca: pki.KeyPair, serving: pki.KeyPair) -> None:
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
                "data": {
                    "ca.crt": b64(ca.certificate_pem),
                    "ca.key": b64(ca.key_pem),
                    "tls.crt": b64(serving.certificate_pem),
                    "tls.key": b64(serving.key_pem),
                },
            },
        ]
        apply(self.cluster, *objects)


def _certificates() -> tuple[pki.KeyPair, pki.KeyPair]:
    """A CA the rotator accepts (valid for the DNS name kueue-ca, well past its 90-day look-ahead) and a
    serving certificate for the webhook Service's name and for 127.0.0.1, where the API server calls it."""
    # RSA in PKCS#1: the rotator parses the CA key from the Secret with x509.ParsePKCS1PrivateKey.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_NAME)]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    ca = pki.KeyPair(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    )
    hosts = [f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc", "127.0.0.1"]
    return ca, pki.make_serving_certificate(ca, hosts[0], hosts, days=365)


def apply(cluster: LocalCluster, *objects: dict) -> None:
    """Create or update Kueue objects (or any others) with server-side apply."""
    cluster.run_kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def wait_for(probe, timeout: float, what: str):
    """Poll ``probe`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.3)
    raise ClusterError(f"timed out after {timeout}s waiting for {what}")
