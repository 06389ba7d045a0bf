"""The artifact manifest: per-file sha256 and one digest over them, written last.

A reader trusts an artifact directory only when manifest.json exists and every file matches it,
so an interrupted upload (no manifest yet) is never published. The digest covers the sorted
"<sha256>  <path>" lines (the format of sha256sum), so anyone can recompute it with coreutils:
``sha256sum $(cat files) | sort -k2 | sha256sum`` over the same paths.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import field_validator

from .base import ApiModel, describe, text
from .paths import unsafe_segment

MANIFEST_VERSION = 1
MAX_MANIFEST_FILES = 10_000  # a full model has tens of files; a checkpointed adapter a handful
MAX_PATH_LENGTH = 1024
MAX_SIZE_BYTES = 1 << 40  # a TiB a file: the sum over MAX_MANIFEST_FILES still fits an int64 (status.sizeBytes)


def relative_path_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative path of / separated names (None: it is one)."""
    if "\0" in path:
        return "must not hold a NUL character"
    segment = unsafe_segment(path)
    if segment is not None:
        return f"has {segment}: it must be relative and stay below the artifact's directory"
    if any(len(name.encode()) > 255 for name in path.split("/")):
        return "has a name longer than 255 bytes"
    return None


class ManifestEntry(ApiModel):
    path: text(MAX_PATH_LENGTH, min_length=1) = describe("Path relative to the artifact directory, with / separators.")
    size: int = describe("Size in bytes.", ge=0, le=MAX_SIZE_BYTES)
    sha256: text(64, r"^[a-f0-9]{64}$") = describe("Hex sha256 of the file's content.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        problem = relative_path_problem(value)
        if problem:
            raise ValueError(problem)  # the path itself is not echoed: it is the artifact's content
        return value


class Manifest(ApiModel):
    version: int = describe("Manifest format version.", default=MANIFEST_VERSION)
    files: list[ManifestEntry] = describe(
        "Every file of the artifact but the manifest itself.", max_length=MAX_MANIFEST_FILES
    )
    digest: text(71, r"^sha256:[a-f0-9]{64}$") = describe("sha256 over the sorted sha256sum lines of files.")

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


def digest_of(entries: list[ManifestEntry]) -> str:
    lines = "".join(f"{e.sha256}  {e.path}\n" for e in sorted(entries, key=lambda e: e.path))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def build_manifest(entries: list[ManifestEntry]) -> Manifest:
    ordered = sorted(entries, key=lambda e: e.path)
    return Manifest(files=ordered, digest=digest_of(ordered))


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_of_directory(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> Manifest:
    """The manifest of every regular file under ``root`` (recursively), excluding ``exclude``."""
    entries = [
        ManifestEntry(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=file_sha256(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in exclude
    ]
    return build_manifest(entries)
