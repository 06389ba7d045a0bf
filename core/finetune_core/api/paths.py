"""Paths a tenant writes or names: object keys, claim paths, mount paths. Pure checks, shared.

The API refuses them at admission (pydantic, and the CEL twins below in the CRDs); the trainer
checks again wherever a remote name becomes a local path (finetune_trainer.storage), because a
bucket listing is not admitted by anyone. A ``..``, ``.`` or empty segment is refused rather than
resolved: there is no reading of ``a/../b`` that a user needs, and every reading of it is a way
out of the directory it was joined onto.
"""

from __future__ import annotations

import posixpath

_DOT_SEGMENTS = (".", "..")


class UnsafePathError(ValueError):
    """A relative path with a segment that could leave the directory it is joined onto."""


def unsafe_segment(relative: str) -> str | None:
    """What is wrong with ``relative`` as a path below a directory, or None when it stays below it.

    Every ``/``-separated segment must be a name: not empty (which makes ``/abs`` absolute and
    ``a//b`` ambiguous), not ``.`` and not ``..``.
    """
    for segment in relative.split("/"):
        if segment == "":
            return "an empty segment (a leading '/' or '//')"
        if segment in _DOT_SEGMENTS:
            return f"a {segment!r} segment"
    return None


def checked_relative(relative: str, what: str) -> str:
    """``relative`` if it stays below the directory it is joined onto; else UnsafePathError naming ``what``."""
    problem = unsafe_segment(relative)
    if problem is not None:
        raise UnsafePathError(f"{what} {relative!r} has {problem}: it must stay below its directory")
    return relative


# s3://bucket/key, pvc://claim/path and hf://datasets/org/name/path: what follows the authority is
# joined onto a cache, a claim's mount or a snapshot. (file:// names an absolute local path, and
# hf:// models are constrained to org/name by the URI patterns.)
_JOINED_SCHEMES = ("s3://", "pvc://", "hf://")
# The CEL twin of uri_path_problem: a URI of those schemes whose path (after "authority/") starts
# with "/", has a "." or ".." segment, or has "//" anywhere ((?s): a newline hides nothing).
UNSAFE_URI_PATH_CEL_PATTERN = r"(?s)^(s3|pvc|hf)://[^/]+/(/|(.*/)?[.][.]?(/.*)?$|.*//)"
URI_PATH_MESSAGE = (
    "must not have empty, '.' or '..' path segments (no '//', no '/./', no '/../'): "
    "a key or claim path always stays below its bucket or claim"
)


def uri_path_problem(uri: str) -> str | None:
    """What is wrong with the path part of an s3://, pvc:// or hf:// URI, or None.

    One trailing ``/`` is allowed (a prefix), and so is no path at all (a bucket or a whole claim).
    """
    if not uri.startswith(_JOINED_SCHEMES):
        return None
    _, _, rest = uri.partition("://")
    _, slash, path = rest.partition("/")
    if not slash or path == "":
        return None
    return unsafe_segment(path.removesuffix("/"))


def checked_uri(uri: str) -> str:
    """``uri`` if its path stays below its bucket or claim; ValueError otherwise (pydantic names the field, and
    the message leaves the value out: it reaches the object's status)."""
    problem = uri_path_problem(uri)
    if problem is not None:
        raise ValueError(f"the URI has {problem}: a URI {URI_PATH_MESSAGE}")
    return uri


def normalised_mount_path(path: str) -> str:
    """The directory a container mount path means: "/etc//finetune/." is "/etc/finetune".

    ``..`` segments are refused by the API before this is asked (a runtime resolves them after
    symlinks, so their lexical reading is not the mount's); posixpath keeps a leading "//", which
    Linux reads as "/".
    """
    return "/" + posixpath.normpath(path).lstrip("/")


def is_within(path: str, directory: str) -> bool:
    """Whether the normalised ``path`` is ``directory`` or below it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")
