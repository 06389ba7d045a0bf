"""Reading stored artifacts: the operator checks what the trainer wrote (or a user imported).

s3:// with the credentials of a Secret (any S3-compatible endpoint), and file:// for local runs.
pvc:// cannot be read from the operator's pod; callers decide what that means.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Protocol

from .kube import SECRETS, Kube

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")


class StorageUnreachable(Exception):
    """The location cannot be read from here (pvc://), or its credentials are missing."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Store(Protocol):
    uri: str

    def read(self, name: str) -> bytes | None: ...

    def size(self, name: str) -> int | None: ...

    def sha256(self, name: str) -> str | None: ...


class FileStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(uri.removeprefix("file://"))

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes | None:
        path = self._path(name)
        return path.read_bytes() if path.is_file() else None

    def size(self, name: str) -> int | None:
        path = self._path(name)
        return path.stat().st_size if path.is_file() else None

    def sha256(self, name: str) -> str | None:
        path = self._path(name)
        if not path.is_file():
            return None
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


class S3Store:
    def __init__(self, uri: str, credentials: dict[str, str]):
        import boto3
        from botocore.config import Config

        self.uri = uri
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client(
            "s3",
            aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
            endpoint_url=credentials.get("AWS_ENDPOINT_URL"),
            region_name=credentials.get("AWS_REGION") or "us-east-1",
            config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}),
        )

    def _call(self, action, name: str):
        """Run one S3 request: a missing object is None; any other failure is StorageUnreachable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return action(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageUnreachable("StorageError", f"{self.uri}{name}: {error}") from None
        except BotoCoreError as error:  # no credentials, endpoint unreachable, timeouts
            raise StorageUnreachable("StorageError", f"{self.uri}{name}: {error}") from None

    def read(self, name: str) -> bytes | None:
        found = self._call(self.client.get_object, name)
        return None if found is None else found["Body"].read()

    def size(self, name: str) -> int | None:
        found = self._call(self.client.head_object, name)
        return None if found is None else int(found["ContentLength"])

    def sha256(self, name: str) -> str | None:
        found = self._call(self.client.get_object, name)
        if found is None:
            return None
        digest = hashlib.sha256()
        for chunk in found["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def secret_credentials(kube: Kube, namespace: str, name: str | None) -> dict[str, str]:
    """The S3 keys of a Secret; values stay in memory, never in logs, status or events."""
    if name is None:
        return {}
    secret = kube.get(SECRETS, namespace, name)
    if secret is None:
        raise StorageUnreachable("SecretNotFound", f"Secret {name} not found in namespace {namespace}")
    data = secret.get("data") or {}
    return {key: base64.b64decode(data[key]).decode().strip() for key in CREDENTIAL_KEYS if key in data}


def open_store(uri: str, credentials: dict[str, str]) -> Store:
    if uri.startswith("s3://"):
        return S3Store(uri, credentials)
    if uri.startswith("file://"):
        return FileStore(uri)
    raise StorageUnreachable("StorageNotReadable", f"the operator cannot read {uri.split('://')[0]}:// locations")
