"""Reading stored artifacts: the operator checks what the trainer wrote (or a user imported).

Everything read here belongs to a tenant, so every read is bounded:
- a small object (manifest.json, adapter_config.json, ...) is at most SMALL_OBJECT_LIMIT_BYTES: its
  size is asked first, and the read stops one byte past the limit whatever the size said;
- a file is hashed as a stream, only once its size matched its manifest's, and never further than
  that size;
- all the reads of one opened store share one Deadline, checked before every request and between
  socket reads (each returns after one receive, itself bounded by the client's read timeout).
s3:// is read only with the keys of a Secret, never with the operator's own identity, and only at an
endpoint the platform admin allows (finetune_core.endpoints); file:// only by an operator in local mode. pvc://
cannot be read from the operator's pod: a verification pod reads it (adapters/volume.py).
Messages name the object and the problem; they never carry an object's content or a store's answer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_core import s3
from finetune_core.uri import parse_uri

from .kube import SECRETS, Kube

if TYPE_CHECKING:
    from .settings import Settings

SMALL_OBJECT_LIMIT_BYTES = 1 << 20  # manifest.json of 10,000 files is about 1 MiB; configs are a few KiB
CHUNK_BYTES = 1 << 20
DEFAULT_DEADLINE_SECONDS = 300.0


class StorageProblem(Exception):
    """``reason`` is a condition reason; ``message`` names the object and the problem."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class StorageUnreachable(StorageProblem):
    """The store cannot be read from here (credentials, endpoint, time): nothing said about its objects."""


class ObjectRefused(StorageProblem):
    """An object the operator will not read: too large, outside its directory, or gone while read."""


class Deadline:
    """One wall-clock budget for all the reads of one look at a store."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._ends = clock() + seconds

    def check(self, location: str) -> None:
        if self._clock() >= self._ends:
            raise StorageUnreachable(
                "VerificationTimedOut", f"{location}: still reading after the {self.seconds:g} s allowed for one look"
            )


def read_at_most(chunks: Iterable[bytes], limit: int) -> bytes | None:
    """All the bytes of ``chunks`` when they are at most ``limit``; None as soon as there are more."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def sha256_of_exactly(chunks: Iterable[bytes], size: int) -> str | None:
    """The hex sha256 of ``chunks`` when they hold exactly ``size`` bytes; None otherwise (and no more is read)."""
    digest = hashlib.sha256()
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > size:
            return None
        digest.update(chunk)
    return digest.hexdigest() if seen == size else None


class Store:
    """Bounded reads over what each kind of store provides: an object's size and its first bytes."""

    uri: str
    deadline: Deadline

    def location(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    def size(self, name: str) -> int | None:
        """The object's size in bytes; None when there is no such object."""
        raise NotImplementedError

    def chunks(self, name: str, at_most: int) -> Iterator[bytes]:
        """At most ``at_most`` bytes of the object from its start, one read at a time."""
        raise NotImplementedError

    def read_small(self, name: str, limit: int = SMALL_OBJECT_LIMIT_BYTES) -> bytes | None:
        """A small object's bytes (None: there is none); ObjectRefused when it is larger than ``limit``."""
        size = self.size(name)
        if size is None:
            return None
        if size > limit:
            raise ObjectRefused("ObjectTooLarge", f"{self.location(name)} is {size} bytes; at most {limit} are read")
        data = read_at_most(self.chunks(name, limit + 1), limit)
        if data is None:  # its size said less than what came
            raise ObjectRefused("ObjectTooLarge", f"{self.location(name)} is larger than {limit} bytes")
        return data

    def sha256(self, name: str, size: int) -> str | None:
        """The object's sha256 when it holds exactly ``size`` bytes; None otherwise. Reads at most size+1."""
        return sha256_of_exactly(self.chunks(name, size + 1), size)


class FileStore(Store):
    """A directory: the verification pod's mounted claim, or anything in local mode."""

    def __init__(self, uri: str, deadline: Deadline | None = None):
        self.uri = uri
        self.root = Path(uri.removeprefix("file://"))
        self.deadline = deadline or Deadline(DEFAULT_DEADLINE_SECONDS)

    def _path(self, name: str) -> Path:
        """The file ``name`` under the root; a name that leads elsewhere (.., a symlink) is refused."""
        try:
            root = self.root.resolve()
            path = (root / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise ObjectRefused("PathOutsideArtifact", f"{self.location(name)} cannot be resolved") from None
        if not path.is_relative_to(root):
            raise ObjectRefused("PathOutsideArtifact", f"{self.location(name)} leads outside {self.uri}")
        return path

    def size(self, name: str) -> int | None:
        self.deadline.check(self.location(name))
        path = self._path(name)
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise StorageUnreachable("StorageError", f"{self.location(name)}: {error.strerror}") from None
        return found.st_size if stat.S_ISREG(found.st_mode) else None  # a FIFO or device is no file

    def chunks(self, name: str, at_most: int) -> Iterator[bytes]:
        location = self.location(name)
        try:
            # O_NONBLOCK: a FIFO put there since size() must not block the open
            descriptor = os.open(self._path(name), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ObjectRefused("FileMissing", f"{location} disappeared while it was read") from None
        except OSError as error:
            raise StorageUnreachable("StorageError", f"{location}: {error.strerror}") from None
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ObjectRefused("FileMissing", f"{location} is not a regular file")
            left = at_most
            while left > 0:
                self.deadline.check(location)
                chunk = handle.read(min(CHUNK_BYTES, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


def s3_client(credentials: dict[str, str], allowed_endpoints: frozenset[str]):
    """The shared client (finetune_core.s3) with the operator's policy: only an allowed endpoint, a reconcile's
    patience. A refusal is StorageUnreachable with the shared reason (CredentialsMissing, EndpointNotAllowed)."""
    try:
        return s3.client(credentials, endpoint_allowlist=allowed_endpoints, policy=s3.VERIFY)
    except s3.ClientRefused as refused:
        raise StorageUnreachable(refused.reason, refused.message) from None


def _answer(error) -> str:
    """What the store said, as status code and error code only: never the body of its answer."""
    status = (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = str((error.response.get("Error") or {}).get("Code", ""))
    code = code if re.fullmatch(r"[A-Za-z0-9.]{1,64}", code) and code != str(status) else ""
    return f"the store answered {status or 'with an error'}{f' ({code})' if code else ''}"


def _failure(error: Exception) -> str:
    """A request that got no answer, named by its kind (botocore's messages can quote a response body)."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    for kind, words in [
        (ConnectTimeoutError, "cannot connect to the store (timed out)"),
        (EndpointConnectionError, "cannot connect to the store"),
        (ReadTimeoutError, "the store did not answer in time"),
        (NoCredentialsError, "no credentials"),
    ]:
        if isinstance(error, kind):
            return words
    return f"the request failed ({type(error).__name__})"


class S3Store(Store):
    def __init__(self, uri: str, client, deadline: Deadline):
        self.uri = uri
        parsed = parse_uri(uri)
        self.bucket = parsed.authority
        self.prefix = parsed.prefix
        self.client = client
        self.deadline = deadline

    def _call(self, action, name: str):
        """Run one S3 request: a missing object is None; any other failure is StorageUnreachable."""
        from botocore.exceptions import BotoCoreError, ClientError

        location = self.location(name)
        self.deadline.check(location)
        try:
            return action(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as error:
            if str((error.response.get("Error") or {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageUnreachable("StorageError", f"{location}: {_answer(error)}") from None
        except BotoCoreError as error:
            raise StorageUnreachable("StorageError", f"{location}: {_failure(error)}") from None

    def size(self, name: str) -> int | None:
        found = self._call(self.client.head_object, name)
        return None if found is None else int(found["ContentLength"])

    def chunks(self, name: str, at_most: int) -> Iterator[bytes]:
        from urllib3.exceptions import HTTPError

        location = self.location(name)
        found = self._call(self.client.get_object, name)
        if found is None:
            raise ObjectRefused("FileMissing", f"{location} disappeared while it was read")
        # botocore hands over urllib3's response here: its read1 returns after one socket read, where
        # StreamingBody.read(n) waits for n bytes, however slowly they come.
        with found["Body"] as response:
            left = at_most
            while left > 0:
                self.deadline.check(location)
                try:
                    chunk = response.read1(min(CHUNK_BYTES, left))
                except (HTTPError, OSError) as error:
                    raise StorageUnreachable(
                        "StorageError", f"{location}: reading failed ({type(error).__name__})"
                    ) from None
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


def secret_credentials(kube: Kube, namespace: str, name: str | None) -> dict[str, str]:
    """The S3 keys of a Secret; values stay in memory, never in logs, status or events."""
    if name is None:
        return {}
    secret = kube.get(SECRETS, namespace, name)
    if secret is None:
        raise StorageUnreachable("SecretNotFound", f"Secret {name} not found in namespace {namespace}")
    data = secret.get("data") or {}
    return {key: base64.b64decode(data[key]).decode(errors="replace").strip() for key in s3.S3_KEYS if key in data}


def open_store(
    uri: str, credentials: dict[str, str], settings: Settings, clock: Callable[[], float] = time.monotonic
) -> Store:
    """The store at ``uri`` with a fresh deadline for all of its reads."""
    deadline = Deadline(settings.verification_timeout_seconds, clock)
    if uri.startswith("s3://"):
        return S3Store(uri, s3_client(credentials, settings.allowed_endpoints), deadline)
    if uri.startswith("file://"):
        if not settings.allow_local_files:
            raise StorageUnreachable(
                "StorageNotReadable",
                "the operator reads file:// locations only in local mode (--allow-local-files); "
                "in a cluster, store artifacts in s3:// or pvc://",
            )
        return FileStore(uri, deadline)
    raise StorageUnreachable("StorageNotReadable", f"the operator cannot read {uri.split('://')[0]}:// locations")
