"""The seal of a checkpoint: its marker lists every file with its size and sha256.

A checkpoint is read only after every file its marker lists was found with that size and digest;
files the marker does not list are never opened. A checkpoint that fails is *damaged*, with a short
reason code that may be shown to people (never a file's content):

    marker_unreadable  the marker is not a marker of this format (or is too large)
    unverifiable       the marker lists no files (written by a trainer before seals carried digests)
    file_missing       a listed file is absent
    size_mismatch      a listed file has another size (truncated, or replaced)
    digest_mismatch    a listed file has the right size and other bytes (replaced)
    unreadable         the files match their seal but do not parse (written wrongly, or forged with the seal)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MARKER = "complete.json"
MARKER_FORMAT = 2
MAX_MARKER_BYTES = 8 * 1024 * 1024  # ~50,000 files; a sharded checkpoint of thousands of ranks fits
_CHUNK = 1024 * 1024


class DamagedCheckpoint(Exception):
    """A sealed checkpoint that must not be resumed; ``reason`` is one of the codes above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class SealedFile:
    path: str  # relative to the checkpoint's directory, with forward slashes
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def files_under(directory: Path) -> list[str]:
    """The relative paths of the files below ``directory`` (the marker excluded), sorted."""
    return sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).as_posix() != MARKER
    )


def describe(directory: Path, paths: Iterable[str]) -> list[SealedFile]:
    """Size and digest of each of ``paths`` below ``directory``."""
    return [_sealed(directory, path) for path in paths]


def marker_content(step: int, world_size: int, files: Iterable[SealedFile], saved_at: float) -> bytes:
    listed = sorted(files, key=lambda sealed: sealed.path)
    marker = {
        "format": MARKER_FORMAT,
        "step": step,
        "world_size": world_size,
        "saved_at": saved_at,
        "files": [sealed.to_json() for sealed in listed],
    }
    return json.dumps(marker, indent=1).encode()


def read_marker(directory: Path) -> list[SealedFile]:
    """The files the marker in ``directory`` lists; DamagedCheckpoint when it is no marker of this format."""
    path = directory / MARKER
    try:
        if path.stat().st_size > MAX_MARKER_BYTES:
            raise DamagedCheckpoint("marker_unreadable", f"{MARKER} is larger than {MAX_MARKER_BYTES} bytes")
        marker = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DamagedCheckpoint("file_missing", f"{MARKER} is absent") from None
    except (ValueError, RecursionError):
        raise DamagedCheckpoint("marker_unreadable", f"{MARKER} is not JSON") from None
    if not isinstance(marker, dict):
        raise DamagedCheckpoint("marker_unreadable", f"{MARKER} is not a JSON object")
    if "files" not in marker:
        raise DamagedCheckpoint("unverifiable", f"{MARKER} lists no files: written before seals carried digests")
    files = marker["files"]
    if marker.get("format") != MARKER_FORMAT or not isinstance(files, list):
        raise DamagedCheckpoint("marker_unreadable", f"{MARKER} is not of format {MARKER_FORMAT}")
    sealed = [_listed(entry, index) for index, entry in enumerate(files)]
    if len({entry.path for entry in sealed}) != len(sealed):
        raise DamagedCheckpoint("marker_unreadable", f"{MARKER} lists a file twice")
    return sealed


def verify(directory: Path, files: Iterable[SealedFile]) -> None:
    """Every listed file exists below ``directory`` with its size and digest, else DamagedCheckpoint."""
    for expected in files:
        path = directory / expected.path
        if not path.is_file():
            raise DamagedCheckpoint("file_missing", f"{expected.path} is absent")
        if path.stat().st_size != expected.size:
            raise DamagedCheckpoint("size_mismatch", f"{expected.path} does not have the sealed size")
        if _sealed(directory, expected.path).sha256 != expected.sha256:
            raise DamagedCheckpoint("digest_mismatch", f"{expected.path} does not have the sealed sha256")


def _sealed(directory: Path, relative: str) -> SealedFile:
    digest = hashlib.sha256()
    size = 0
    with (directory / relative).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return SealedFile(relative, size, digest.hexdigest())


def _listed(entry: Any, index: int) -> SealedFile:
    where = f"{MARKER} files[{index}]"
    if not isinstance(entry, dict):
        raise DamagedCheckpoint("marker_unreadable", f"{where} is not an object")
    path, size, sha256 = entry.get("path"), entry.get("size"), entry.get("sha256")
    if not isinstance(path, str) or not _is_plain_relative(path):
        raise DamagedCheckpoint("marker_unreadable", f"{where}.path is not a relative path inside the checkpoint")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DamagedCheckpoint("marker_unreadable", f"{where}.size is not a size")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise DamagedCheckpoint("marker_unreadable", f"{where}.sha256 is not a hex sha256")
    return SealedFile(path, size, sha256)


def _is_plain_relative(path: str) -> bool:
    """No absolute path, no empty, '.' or '..' segment, no backslash, not the marker itself: stays inside."""
    parts = path.split("/")
    return (
        0 < len(path) <= 1024
        and "\\" not in path
        and "\x00" not in path
        and all(part not in ("", ".", "..") for part in parts)
        and PurePosixPath(path).as_posix() == path
        and path != MARKER
    )
