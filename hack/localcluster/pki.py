"""Certificates and keys of the test control plane: a CA, the API server's serving certificate and
the ServiceAccount token signing key pair. The X.509 work is the operator's own (certificates.py)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from finetune_operator.certificates import KeyPair, make_ca, make_serving_certificate

API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVER_IPS = ("127.0.0.1", "10.0.0.1")


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def write_ca(directory: Path, common_name: str = "finetune-operator-test-ca") -> KeyPair:
    ca = make_ca(common_name, days=30)
    _write(directory / "ca.crt", ca.certificate_pem)
    _write(directory / "ca.key", ca.key_pem, private=True)
    return ca


def write_serving_cert(directory: Path, name: str, ca: KeyPair, hosts: list[str]) -> None:
    pair = make_serving_certificate(ca, name, hosts, days=30)
    _write(directory / f"{name}.crt", pair.certificate_pem)
    _write(directory / f"{name}.key", pair.key_pem, private=True)


def write_service_account_keys(directory: Path) -> None:
    """RSA, as kube-apiserver signs ServiceAccount tokens with RS256 by default."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(directory / "sa.key", private, private=True)
    _write(directory / "sa.pub", public)
