"""The URIs of models, data and outputs, parsed one way for the operator and the trainer.

- ``file:///abs/path``: a local path (laptops, the test node; the operator reads it only in local mode).
- ``pvc://claim/path``: a path in a PersistentVolumeClaim, mounted under one root directory per pod.
- ``s3://bucket/prefix``: any S3-compatible store.
- ``hf://org/name`` (models) and ``hf://datasets/org/name[/sub/path]`` (data): the Hugging Face Hub.

What follows the authority of s3://, pvc:// and hf:// is joined onto a cache, a claim's mount or a
snapshot, so a URI whose authority or path has an empty, ``.`` or ``..`` segment is refused here, once,
for every caller: the API refuses such URIs at admission, and this is the same rule for what reaches a
process some other way. Messages show the URI escaped and cut short, never a control character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_core.api.paths import UnsafePathError, checked_relative

SCHEMES = ("file", "pvc", "s3", "hf")
_AUTHORITY = {"s3": "bucket", "pvc": "claim", "hf": "name"}
_SHOWN_CHARACTERS = 256


class UriError(ValueError):
    """A URI that names nothing this project can read or write; the message says what form to use."""


@dataclass(frozen=True)
class Uri:
    scheme: str  # file, pvc, s3, hf
    authority: str  # bucket, claim, "org" or "datasets" of hf://, or "" for file://
    path: str  # without leading or trailing slash for s3/pvc/hf; absolute for file

    @property
    def text(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.authority}/{self.path}".rstrip("/")

    @property
    def prefix(self) -> str:
        """The path as an S3 key prefix: ``path/``, or "" for the whole bucket."""
        return f"{self.path}/" if self.path else ""


def shown(uri: str) -> str:
    """``uri`` for a message: escaped (repr), and cut at 256 characters."""
    if len(uri) <= _SHOWN_CHARACTERS:
        return repr(uri)
    return repr(uri[:_SHOWN_CHARACTERS]) + "..."


def parse_uri(uri: str) -> Uri:
    """The parts of ``uri``; UriError for an unknown scheme, a relative file path, a missing authority or a
    path segment that could leave what it is joined onto."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise UriError(
            f"unsupported URI {shown(uri)}: use file:///abs/path, pvc://claim/path, s3://bucket/prefix or hf://"
        )
    if scheme == "file":
        if not rest.startswith("/"):
            raise UriError(f"file URI {shown(uri)} must be absolute: file:///abs/path")
        return Uri("file", "", rest)
    authority, _, path = rest.partition("/")
    if not authority:
        raise UriError(f"URI {shown(uri)} lacks the {_AUTHORITY[scheme]} after {scheme}://")
    path = path.removesuffix("/")  # one trailing slash says "a prefix"; more would be an empty segment
    try:
        checked_relative(authority, f"the {_AUTHORITY[scheme]} of {shown(uri)}")
        if path:
            checked_relative(path, f"the path of {shown(uri)}")
    except UnsafePathError as problem:
        raise UriError(str(problem)) from None
    return Uri(scheme, authority, path)


def local_path(uri: str, pvc_root: Path) -> Path | None:
    """The local path of a file:// URI, or of a pvc:// URI with its claims mounted under ``pvc_root``;
    None for remote schemes."""
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "pvc":
        claim = pvc_root / parsed.authority
        return claim / parsed.path if parsed.path else claim
    return None
