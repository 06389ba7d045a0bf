"""TLS of the operator's HTTPS endpoints (progress, and /metrics): a certificate from a Secret (cert-manager
compatible), or one the operator signs with its own CA, kept in a Secret so restarts do not invalidate what
pods (and Prometheus) trust."""

from __future__ import annotations

import base64
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..certificates import KeyPair, make_ca, make_serving_certificate
from ..kube import SECRETS, Kube
from ..settings import Settings

log = logging.getLogger(__name__)

CA_SECRET = "finetune-operator-progress-ca"  # noqa: S105 the name of a Secret, not its value


@dataclass(frozen=True)
class ServingTLS:
    serving: KeyPair
    ca_pem: str  # what the pods trust

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.apply_to(context)
        return context

    def apply_to(self, context: ssl.SSLContext) -> None:
        """Serve this certificate on ``context`` (a live server's too: new handshakes get it)."""
        # load_cert_chain reads files only; the key lives in a private temporary directory briefly.
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
            cert.write_bytes(self.serving.certificate_pem)
            key.touch(mode=0o600)
            key.write_bytes(self.serving.key_pem)
            context.load_cert_chain(cert, key)


def _decode(secret: dict, key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


def hosts_for(settings: Settings) -> list[str]:
    """The names the operator's own certificate is for: the progress URL's host (as pods reach it), the
    Service's names (as Prometheus reaches /metrics), and loopback."""
    names = list(settings.tls_hosts)
    if settings.progress_url and (host := urlparse(settings.progress_url).hostname):
        names.insert(0, host)
    hosts = [
        host for name in names for host in (name, f"{name}.cluster.local") if host == name or name.endswith(".svc")
    ]
    return list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))


def from_secret(kube: Kube, reference: str) -> ServingTLS:
    namespace, name = reference.split("/", 1)
    secret = kube.get(SECRETS, namespace, name)
    if secret is None:
        raise RuntimeError(f"progress TLS Secret {reference} not found")
    certificate, key = _decode(secret, "tls.crt"), _decode(secret, "tls.key")
    if not certificate or not key:
        raise RuntimeError(f"progress TLS Secret {reference} needs tls.crt and tls.key")
    ca = _decode(secret, "ca.crt") or certificate
    return ServingTLS(KeyPair(certificate, key), ca.decode())


def operator_ca(kube: Kube, namespace: str | None) -> KeyPair:
    """The operator's CA: read from its Secret, or created and stored there (the first replica wins)."""
    if namespace is None:
        log.warning("no operator namespace configured: the progress CA changes at every restart")
        return make_ca("finetune-operator progress CA")
    secret = kube.get(SECRETS, namespace, CA_SECRET)
    if secret is None:
        ca = make_ca("finetune-operator progress CA")
        manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": CA_SECRET,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "finetune-operator"},
            },
            "data": {
                "ca.crt": base64.b64encode(ca.certificate_pem).decode(),
                "ca.key": base64.b64encode(ca.key_pem).decode(),
            },
        }
        secret, _ = kube.create(manifest)
    return KeyPair(_decode(secret, "ca.crt") or b"", _decode(secret, "ca.key") or b"")


def load_serving_tls(kube: Kube, settings: Settings) -> ServingTLS:
    if settings.progress_tls_secret:
        return from_secret(kube, settings.progress_tls_secret)
    ca = operator_ca(kube, settings.operator_namespace)
    serving = make_serving_certificate(ca, "finetune-operator progress", hosts_for(settings))
    return ServingTLS(serving, ca.certificate_pem.decode())


def refreshed_tls(kube: Kube, settings: Settings, current: ServingTLS) -> ServingTLS | None:
    """A newer certificate for the running endpoint, or None: the Secret's once it changed (cert-manager
    renews it before it expires), or a fresh one from the operator's CA, so that one never expires."""
    if settings.progress_tls_secret:
        latest = from_secret(kube, settings.progress_tls_secret)
        return None if latest == current else latest
    return load_serving_tls(kube, settings)
