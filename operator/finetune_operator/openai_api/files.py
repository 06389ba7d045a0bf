"""Where an uploaded file is stored, and the OpenAI file object that describes it.

A file lives at ``<files location>/<namespace>/files/<file id>/<kind>/<filename>``: the namespace keeps
tenants apart (the API only ever lists and reads under the caller's), and the key alone carries what a
file object needs, so listing the prefix answers GET /v1/files without reading any object.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from .datafiles import CHAT, PREFERENCE

FILE_ID_PATTERN = re.compile(r"file-[a-f0-9]{24}")
MAX_FILENAME = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def safe_filename(name: str | None) -> str:
    """The uploaded name reduced to letters, digits, '.', '_' and '-': it becomes part of an object key."""
    cleaned = _UNSAFE.sub("_", (name or "").rsplit("/", 1)[-1]).strip("._")[:MAX_FILENAME]
    return cleaned or "upload.jsonl"


def namespace_prefix(prefix: str, namespace: str) -> str:
    return f"{prefix}{namespace}/files/"


def file_key(prefix: str, namespace: str, file_id: str, kind: str, filename: str) -> str:
    return f"{namespace_prefix(prefix, namespace)}{file_id}/{kind}/{filename}"


@dataclass(frozen=True)
class StoredFile:
    id: str
    kind: str
    filename: str
    key: str
    bytes: int
    created_at: int


def parse_key(prefix: str, namespace: str, key: str, size: int, modified: datetime) -> StoredFile | None:
    """The file a listed key holds; None for anything else under the prefix."""
    rest = key.removeprefix(namespace_prefix(prefix, namespace))
    if rest == key:
        return None
    parts = rest.split("/")
    if len(parts) != 3 or not FILE_ID_PATTERN.fullmatch(parts[0]) or parts[1] not in (CHAT, PREFERENCE):
        return None
    return StoredFile(parts[0], parts[1], parts[2], key, size, int(modified.timestamp()))


def file_object(stored: StoredFile) -> dict:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at,
        "filename": stored.filename,
        "purpose": "fine-tune",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
