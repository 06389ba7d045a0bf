"""Where the API server is and who the operator is to it: the pod's ServiceAccount, or a kubeconfig.

Read once at start-up, as client-go does: in a pod, the ServiceAccount's token and CA; elsewhere (or
with --kubeconfig) the current context of KUBECONFIG's files (or ~/.kube/config). A token read from
a file is re-read now and then, because the kubelet rotates projected tokens under a running pod.
Only what a static credential needs is supported: a token, a token file or a client certificate;
exec plugins and auth providers are refused by name rather than ignored into 401s.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# client-go's cached token file source re-reads a minute after the last read; the kubelet refreshes a
# projected token at 80% of its life (at least 10 minutes), so a minute-old copy is always still valid.
TOKEN_REREAD_SECONDS = 60.0


class ConfigError(ValueError):
    """The kubeconfig or the in-cluster environment cannot say how to reach the API server."""


class BearerToken:
    """A bearer token, static or read from a file; the file is re-read after ``reread_seconds`` and on demand."""

    def __init__(
        self,
        value: str | None = None,
        path: Path | None = None,
        reread_seconds: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if (value is None) == (path is None):
            raise ValueError("a bearer token is either a value or a file")
        self.path = path
        self.reread_seconds = reread_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value = value or ""
        self._read_at = float("-inf")
        if path is not None:
            self.reload()

    def value(self) -> str:
        if self.path is not None and self._clock() - self._read_at >= self.reread_seconds:
            self.reload()
        return self._value

    def reload(self) -> bool:
        """Read the file again (a request was refused with 401: it may have rotated); True if it changed."""
        if self.path is None:
            return False
        try:
            fresh = self.path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"cannot read the token file {self.path}: {error.strerror}") from None
        with self._lock:
            changed = fresh != self._value
            self._value = fresh
            self._read_at = self._clock()
        return changed


@dataclass(frozen=True)
class Connection:
    server: str  # https://host:port, no trailing slash
    ca_pem: str | None = None  # None: the system's trust store
    cert_pem: str | None = None  # a client certificate and its key, both or neither
    key_pem: str | None = None
    insecure: bool = False  # insecure-skip-tls-verify
    token: BearerToken | None = None
    source: str = ""  # "in-cluster" or the kubeconfig's path: for messages

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        if self.cert_pem and self.key_pem:
            # ssl loads a certificate chain from files only: a private directory, gone once loaded.
            with tempfile.TemporaryDirectory(prefix="finetune-operator-") as directory:
                cert, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
                for path, pem in ((cert, self.cert_pem), (key, self.key_pem)):
                    path.touch(mode=0o600)
                    path.write_text(pem)
                context.load_cert_chain(certfile=cert, keyfile=key)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def load(
    kubeconfig: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    service_account: Path = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """An explicit kubeconfig; else the pod's ServiceAccount; else KUBECONFIG's files or ~/.kube/config."""
    if kubeconfig is not None:
        return from_kubeconfig([Path(kubeconfig)], explicit=True)
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT"):
        return in_cluster(environ, service_account)
    listed = [Path(p) for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return from_kubeconfig(listed or [Path.home() / ".kube" / "config"], explicit=False)


def in_cluster(environ: Mapping[str, str], service_account: Path = SERVICE_ACCOUNT_DIR) -> Connection:
    host, port = environ["KUBERNETES_SERVICE_HOST"], environ["KUBERNETES_SERVICE_PORT"]
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = service_account / "ca.crt"
    try:
        ca_pem = ca.read_text()
    except OSError as error:
        raise ConfigError(f"in a pod, but cannot read the ServiceAccount CA {ca}: {error.strerror}") from None
    token = BearerToken(path=service_account / "token")
    return Connection(server=f"https://{host}:{port}", ca_pem=ca_pem, token=token, source="in-cluster")


# -- kubeconfig -------------------------------------------------------------------------------------


def from_kubeconfig(paths: Sequence[Path], explicit: bool = False) -> Connection:
    """The current context of ``paths`` merged as kubectl merges KUBECONFIG: the first file to name a
    cluster, user or context (or to set current-context) wins. Missing files are skipped unless
    ``explicit``; relative file names resolve against the file that holds them."""
    merged: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"clusters": {}, "users": {}, "contexts": {}}
    current: str | None = None
    read: list[Path] = []
    for path in paths:
        if not path.exists() and not explicit:
            continue
        config = _read_yaml(path)
        read.append(path)
        current = current or config.get("current-context") or None
        for section, field in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in config.get(section) or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    merged[section].setdefault(entry["name"], (entry.get(field) or {}, path))
    where = ", ".join(str(p) for p in read) or ", ".join(str(p) for p in paths)
    if not read:
        raise ConfigError(f"no kubeconfig found (looked at {where}) and not in a pod")
    if current is None:
        raise ConfigError(f"{where}: current-context is not set")
    context, _ = _entry(merged, "contexts", current, where)
    cluster, cluster_file = _entry(merged, "clusters", context.get("cluster"), where)
    user, user_file = _entry(merged, "users", context.get("user"), where) if context.get("user") else ({}, None)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: cluster {context.get('cluster')!r} has no https:// server")
    for unsupported in ("exec", "auth-provider", "username"):
        if unsupported in user:
            raise ConfigError(
                f"{where}: user {context.get('user')!r} uses {unsupported}, which this client does not support: "
                "give it a token, a tokenFile or a client certificate"
            )
    token = None  # client-go: with both, the file's (re-read) token takes precedence over the inline one
    if user.get("tokenFile"):
        token = BearerToken(path=_resolve(user["tokenFile"], user_file))
    elif user.get("token"):
        token = BearerToken(value=str(user["token"]))
    cert = _pem(user, "client-certificate", user_file, where)
    key = _pem(user, "client-key", user_file, where)
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: user {context.get('user')!r} needs both client-certificate and client-key")
    return Connection(
        server=server.rstrip("/"),
        ca_pem=_pem(cluster, "certificate-authority", cluster_file, where),
        cert_pem=cert,
        key_pem=key,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=token,
        source=where,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the kubeconfig {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a kubeconfig (a mapping at the top)")
    return config


def _entry(
    merged: dict[str, dict[str, tuple[dict[str, Any], Path]]], section: str, name: Any, where: str
) -> tuple[dict[str, Any], Path]:
    if not isinstance(name, str) or name not in merged[section]:
        raise ConfigError(f"{where}: {section[:-1]} {name!r} is not defined")
    entry, path = merged[section][name]
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {section[:-1]} {name!r} is not a mapping")
    return entry, path


def _resolve(name: Any, holder: Path | None) -> Path:
    path = Path(os.path.expanduser(str(name)))
    return path if path.is_absolute() or holder is None else holder.parent / path


def _pem(entry: dict[str, Any], field: str, holder: Path | None, where: str) -> str | None:
    """``field``-data (base64 of PEM) or the file ``field`` names, as PEM text; None when neither is set."""
    if data := entry.get(f"{field}-data"):
        try:
            return base64.b64decode("".join(str(data).split()), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"{where}: {field}-data is not base64 of a PEM file") from None
    if name := entry.get(field):
        path = _resolve(name, holder)
        try:
            return path.read_text()
        except OSError as error:
            raise ConfigError(f"{where}: {field} {path}: {error.strerror}") from None
    return None
