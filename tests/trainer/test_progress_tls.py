"""The progress pusher refuses an endpoint it cannot trust, and never sends it the token.

Real TLS on loopback: certificates made with `cryptography`, a server that counts connections and
records every byte it receives after a handshake, and the trainer's own push client. A server with
a good certificate receives the report and the token, so each refusal below is the client's doing.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from finetune_core.api import CheckpointReport, ProgressEndpoint
from finetune_operator.certificates import KeyPair, make_ca, make_serving_certificate
from finetune_trainer.progress_push import ProgressPusher

pytestmark = pytest.mark.trainer

BEARER_VALUE = "token-that-must-not-leak"
PATH = "/v1/namespaces/team/finetunejobs/job/progress"
WAIT = 30.0  # generous: the machine is shared; nothing here measures speed


class TlsServer:
    """Accepts TCP connections on 127.0.0.1, completes TLS with ``serving`` if the client agrees, records bytes."""

    def __init__(self, serving: KeyPair, directory: Path):
        (directory / "tls.crt").write_bytes(serving.certificate_pem)
        (directory / "tls.key").write_bytes(serving.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []  # what arrived after a completed handshake, per connection
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.changed:
                self.connections += 1
                self.changed.notify_all()
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    tls.settimeout(WAIT)
                    data = self._read_request(tls)
                    with self.changed:
                        self.received.append(data)
                        self.changed.notify_all()
                    tls.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate: the handshake failed, nothing was sent

    @staticmethod
    def _read_request(tls: ssl.SSLSocket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data and (chunk := tls.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while len(body) < length and (chunk := tls.recv(65536)):
            body += chunk
        return head + b"\r\n\r\n" + body

    def wait_for_connection(self) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.connections >= 1, WAIT), "the client never connected"

    def close(self) -> None:
        self.listener.close()


def expired_certificate(ca: KeyPair, host: str) -> KeyPair:
    """A serving certificate for ``host`` from ``ca`` that expired yesterday."""
    ca_certificate = x509.load_pem_x509_certificate(ca.certificate_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "progress")]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), key_pem)


@pytest.fixture
def trusted_ca() -> KeyPair:
    return make_ca("the-operators-ca")


def serving(kind: str, trusted_ca: KeyPair) -> KeyPair:
    if kind == "good":
        return make_serving_certificate(trusted_ca, "progress", ["localhost"])
    if kind == "another CA":
        return make_serving_certificate(make_ca("someone-elses-ca"), "progress", ["localhost"])
    if kind == "wrong hostname":
        return make_serving_certificate(trusted_ca, "progress", ["operator.elsewhere.example"])
    if kind == "expired":
        return expired_certificate(trusted_ca, "localhost")
    raise AssertionError(kind)


@pytest.fixture
def push(tmp_path: Path, trusted_ca: KeyPair) -> Iterator:
    """Starts a server with a certificate of ``kind``, sends one report to it; returns (server, pusher, log)."""
    (tmp_path / "ca.crt").write_bytes(trusted_ca.certificate_pem)
    (tmp_path / "token").write_text(BEARER_VALUE)
    servers: list[TlsServer] = []
    logger = logging.getLogger("finetune_trainer")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def send(kind: str):
        directory = tmp_path / kind.replace(" ", "-")
        directory.mkdir()
        server = TlsServer(serving(kind, trusted_ca), directory)
        servers.append(server)
        endpoint = ProgressEndpoint(
            url=f"https://localhost:{server.port}{PATH}",
            ca_file=str(tmp_path / "ca.crt"),
            token_file=str(tmp_path / "token"),
        )
        pusher = ProgressPusher(endpoint, max_attempts=1)
        pusher.on_checkpoint(CheckpointReport(step=10, uri="file:///out/checkpoints/step-10"))
        server.wait_for_connection()
        pusher.close(timeout=WAIT)
        return server, pusher, records

    yield send
    logger.removeHandler(handler)
    logger.setLevel(level)
    for server in servers:
        server.close()


def test_an_endpoint_with_a_trusted_certificate_gets_the_report_and_the_token(push):
    """The control: the same server and client, with a certificate the client trusts."""
    server, pusher, _ = push("good")
    assert pusher.counters.sent == 1
    (request,) = server.received
    assert request.startswith(f"POST {PATH} ".encode())
    assert f"Authorization: Bearer {BEARER_VALUE}".encode() in request


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("another CA", "unable to get local issuer certificate"),
        ("wrong hostname", "Hostname mismatch"),
        ("expired", "certificate has expired"),
    ],
)
def test_an_endpoint_the_client_cannot_trust_is_refused_and_never_gets_the_token(push, kind, why):
    server, pusher, records = push(kind)
    assert server.connections >= 1, "the client did reach the server"
    assert server.received == [], "bytes were sent over a connection the client should have refused"
    assert (pusher.counters.sent, pusher.counters.failed) == (0, 1)
    failing = [r for r in records if r.getMessage() == "progress_push_failing"]
    assert failing and "CERTIFICATE_VERIFY_FAILED" in failing[0].fields["reason"] and why in failing[0].fields["reason"]
    assert not any(BEARER_VALUE in repr(vars(record)) for record in records), "the token reached the log"
