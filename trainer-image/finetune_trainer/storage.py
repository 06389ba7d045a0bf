"""Where things live: URIs to local paths, downloads of models and data, uploads of outputs.

Schemes (parsed by finetune_core.uri):
- ``file:///abs/path``: a local path (laptops, the test node).
- ``pvc://claim/path``: ``${FINETUNE_PVC_ROOT:-/mnt/pvc}/claim/path``; the operator mounts each claim there.
- ``s3://bucket/prefix``: any S3-compatible store (clients from finetune_core.s3).
- ``hf://org/name`` (models) and ``hf://datasets/org/name[/sub/path]`` (data): the Hugging Face Hub or
  the mirror in HF_ENDPOINT, pinned to a revision that is resolved to a commit and reported.

Credentials: the operator mounts each referenced Secret as files under
``${FINETUNE_CREDENTIALS_DIR:-/var/run/finetune/credentials}/{model,data,output}/<KEY>``. Where the
directory of a purpose is absent, the process environment is used. Values are never logged.

Output locations (:class:`Location`) are directories with a small set of operations. Their writers
keep one rule: a directory is complete only once its marker file exists, and the marker is written
last (a rename on local storage, the last upload on S3), so a reader never takes a partial upload.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from finetune_core import s3
from finetune_core.api.paths import UnsafePathError, checked_relative
from finetune_core.s3 import CREDENTIAL_KEYS
from finetune_core.uri import Uri, UriError
from finetune_core.uri import local_path as uri_local_path
from finetune_core.uri import parse_uri as uri_parts

from . import log
from .errors import ConfigError, DataError, TrainerError

Purpose = Literal["model", "data", "output"]
# Weight formats other than safetensors and framework exports we never load: not worth downloading.
HF_IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "original/*"]


def pvc_root() -> Path:
    return Path(os.environ.get("FINETUNE_PVC_ROOT", "/mnt/pvc"))


def credentials_root() -> Path:
    return Path(os.environ.get("FINETUNE_CREDENTIALS_DIR", "/var/run/finetune/credentials"))


def cache_root() -> Path:
    """Downloads (models, data) that survive a retry of the pod when it is a volume; else a temp dir."""
    return Path(os.environ.get("FINETUNE_CACHE_DIR", Path.home() / ".cache" / "finetune-trainer"))


# ---------------------------------------------------------------------------------------------
# credentials


@dataclass(frozen=True)
class Credentials:
    """The credential values for one purpose. ``repr`` shows the keys present, never a value."""

    source: str
    values: Mapping[str, str] = field(default_factory=dict, repr=False)

    def get(self, key: str) -> str | None:
        return self.values.get(key) or None

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, keys={sorted(self.values)})"


def credentials_for(purpose: Purpose) -> Credentials:
    directory = credentials_root() / purpose
    if directory.is_dir():
        return _credentials_in(directory)
    return Credentials(source="environment", values={k: os.environ[k] for k in CREDENTIAL_KEYS if os.environ.get(k)})


def _credentials_in(directory: Path) -> Credentials:
    values = {}
    for key in CREDENTIAL_KEYS:
        path = directory / key
        if path.is_file():
            # Secrets written by hand often end with a newline that is not part of the key.
            values[key] = path.read_text(encoding="utf-8").strip()
    return Credentials(source=str(directory), values=values)


# ---------------------------------------------------------------------------------------------
# local paths of remote names


def checked_name(relative: str, what: str, error: type[TrainerError] = DataError) -> str:
    """``relative`` if it has no empty, ``.`` or ``..`` segment; else ``error`` naming ``what``."""
    try:
        return checked_relative(relative, what)
    except UnsafePathError as problem:
        raise error(str(problem)) from None


def join_below(root: Path, relative: str, what: str, error: type[TrainerError] = DataError) -> Path:
    """``root / relative``, with ``relative`` checked by :func:`checked_name`.

    Every remote name that becomes a local path goes through here: object keys of a listing, claim paths,
    checkpoint and artifact names. The API refuses such URIs already; a bucket's listing is checked by
    no one else, and the filesystem resolves ``..`` onto whatever lies above the cache.
    """
    return root / checked_name(relative, what, error)


# ---------------------------------------------------------------------------------------------
# URIs


def parse_uri(uri: str) -> Uri:
    """The parts of ``uri`` (finetune_core.uri); a URI it refuses is the user's to fix: a ConfigError."""
    try:
        return uri_parts(uri)
    except UriError as error:
        raise ConfigError(str(error)) from None


def local_path(uri: str) -> Path | None:
    """The local path of a file:// or pvc:// URI (claims are mounted under FINETUNE_PVC_ROOT); None for remote
    schemes."""
    try:
        return uri_local_path(uri, pvc_root())
    except UriError as error:
        raise ConfigError(str(error)) from None


# ---------------------------------------------------------------------------------------------
# S3


def s3_client(credentials: Credentials):
    """The shared client (finetune_core.s3) with the trainer's policy: patient transfers, any endpoint the
    tenant's own Secret names (this process is the tenant's). Minted credentials (they carry an expiry) are
    read again from their mounted files before they expire: the operator mints them again at half their
    lifetime and the kubelet updates the files, so a training longer than one session never meets expired
    ones. ConfigError when the Secret lacks its keys or names a region or endpoint that cannot be used.
    """
    directory = Path(credentials.source)
    refresh = None
    if credentials.get("AWS_CREDENTIAL_EXPIRATION") and directory.is_dir():
        refresh = lambda: _credentials_in(directory).values  # noqa: E731
    try:
        return s3.client(credentials.values, endpoint_allowlist=None, policy=s3.TRANSFER, refresh=refresh)
    except s3.ClientRefused as refused:
        raise ConfigError(f"S3 credentials from {credentials.source}: {refused.message}") from None


# Answers no retry can change: the user must fix the Secret, the bucket or the URI.
_S3_USER_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "403", "404"}


def _s3_user_error(error: Exception, uri: str, purpose: Purpose) -> Exception:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return ConfigError(
            f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the {purpose} Secret"
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _S3_USER_ERRORS:
            return ConfigError(f"{uri}: S3 refused the request ({code}): check the URI and the {purpose} credentials")
    return error


def _s3_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def s3_objects(client, bucket: str, prefix: str) -> Iterator[tuple[str, dict]]:
    """(key relative to ``prefix/``, the listing's object) of every object under the prefix, "directory"
    markers left out. A tenant's bucket may hold "../x" or "/x": DataError, never a name to join onto a path."""
    listing_prefix = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing_prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(listing_prefix) :]
            if relative and not relative.endswith("/"):
                yield checked_name(relative, f"the object s3://{bucket}/{obj['Key']}"), obj


def s3_download(client, bucket: str, prefix: str, dest: Path) -> int:
    """Download every object under ``prefix/`` (or the object ``prefix`` itself) into ``dest``; returns files.

    Files already present with the object's size and ETag are skipped, so a retried pod resumes a large
    download; local files whose objects are gone are removed, so a reused cache never trains on what
    the bucket no longer holds. The ETags are kept beside ``dest``, never inside it (what is downloaded
    is exactly what is stored: artifacts are hashed file by file).
    """
    count = 0
    listed: set[Path] = set()
    for relative, obj in s3_objects(client, bucket, prefix):  # checked: never written outside dest (or etags)
        target = dest / relative
        listed.add(target)
        version = (obj["Size"], str(obj.get("ETag", "")))
        _fetch_unless_current(client, bucket, obj["Key"], target, etag_sidecar(dest, relative), version)
        count += 1
    if count and dest.is_dir():
        hidden = lambda path: any(part.startswith(".") for part in path.relative_to(dest).parts)  # noqa: E731
        for stale in [p for p in dest.rglob("*") if p.is_file() and not hidden(p) and p not in listed]:
            stale.unlink()
            etag_sidecar(dest, stale.relative_to(dest).as_posix()).unlink(missing_ok=True)
    return count


# ---------------------------------------------------------------------------------------------
# reading models and data


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    revision: str | None  # the resolved commit of an hf:// model


def fetch_model(uri: str, revision: str | None = None) -> FetchedModel:
    """A local directory with the base model of ``uri``, downloading it into the cache if remote."""
    parsed = parse_uri(uri)
    if parsed.scheme in ("file", "pvc"):
        path = local_path(uri)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.uri {uri}: no config.json at {path}: point it at a model directory")
        return FetchedModel(path=path, revision=None)
    if parsed.scheme == "hf":
        if revision is None:
            revision = "main"
        repo_id = f"{parsed.authority}/{parsed.path}" if parsed.path else parsed.authority
        path, commit = hf_snapshot(repo_id, revision, repo_type="model", uri=uri)
        return FetchedModel(path=path, revision=commit)
    dest, count = download_s3(parsed, cache_root() / "models", credentials_for("model"), "model", uri)
    if count == 0 or not (dest / "config.json").is_file():
        raise ConfigError(f"model.uri {uri}: no config.json under that prefix: point it at a model directory")
    return FetchedModel(path=dest, revision=None)


def etag_sidecar(local: Path, relative: str | None = None) -> Path:
    """Where the ETag of a download is kept, beside what was downloaded, never inside it (what is downloaded is
    exactly what is stored): ``relative`` under the prefix mirrored at ``local``, or the object ``local`` itself."""
    if relative is None:
        return local.with_name(f".{local.name}.etag")
    return local.with_name(f".{local.name}.etags") / f"{relative}.etag"


def _fetch_unless_current(client, bucket: str, key: str, target: Path, etag: Path, version: tuple[int, str]) -> None:
    """Download ``key`` to ``target`` unless the file there has the object's size and recorded ETag: a retried
    pod resumes a large download, and two pods' downloads of one object record the same version."""
    size, etag_value = version  # the object's, as the listing or a HEAD gives them
    current = etag.is_file() and etag.read_text() == etag_value
    if current and target.is_file() and target.stat().st_size == size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    client.download_file(bucket, key, str(partial))
    partial.replace(target)
    etag.parent.mkdir(parents=True, exist_ok=True)
    etag.write_text(etag_value)


def download_s3(parsed: Uri, cache: Path, credentials: Credentials, purpose: Purpose, uri: str) -> tuple[Path, int]:
    """Mirror the prefix (or the single object) of ``parsed`` under ``cache/<bucket>/<key>``; returns it and its files.

    The cache mirrors the bucket's layout, so an object and a prefix that contains it share the file.
    """
    bucket = join_below(cache, parsed.authority, f"the bucket of {uri}", ConfigError)
    local = join_below(bucket, parsed.path, f"the key of {uri}", ConfigError) if parsed.path else bucket
    try:
        client = s3_client(credentials)
        count = s3_download(client, parsed.authority, parsed.path, local)
        if count == 0 and parsed.path:
            # The URI may name one object rather than a prefix: kept like a prefix's files.
            head = client.head_object(Bucket=parsed.authority, Key=parsed.path)
            version = (head["ContentLength"], str(head.get("ETag", "")))
            _fetch_unless_current(client, parsed.authority, parsed.path, local, etag_sidecar(local), version)
            count = 1
    except Exception as error:
        raise _s3_user_error(error, uri, purpose) from error
    log.info("downloaded", uri=uri, files=count, path=str(local))
    return local, count


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time: huggingface_hub reads it once, at import, before the trainer sets
    anything up."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_snapshot(
    repo_id: str,
    revision: str,
    *,
    repo_type: str,
    uri: str,
    allow_patterns: list[str] | None = None,
    local_dir: Path | None = None,
) -> tuple[Path, str]:
    """Download (or find in the cache) a Hub repository at ``revision``; returns its path and commit.

    HF_ENDPOINT selects a mirror, HF_HUB_OFFLINE=1 uses only the local cache (HF_HOME / HF_HUB_CACHE),
    and HF_TOKEN comes from the credentials of the purpose. With ``local_dir`` the files are written there
    instead of the Hub cache, and ``revision`` must already be the commit (the shared model cache's fill).
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # progress bars are not log lines

    purpose: Purpose = "model" if repo_type == "model" else "data"
    offline = hub_offline()
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else None
    )
    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=cache_dir,
            token=credentials_for(purpose).get("HF_TOKEN") or False,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            local_files_only=offline,
            ignore_patterns=HF_IGNORE_PATTERNS if repo_type == "model" else None,
            allow_patterns=allow_patterns,
            local_dir=local_dir,
        )
    except hf_errors.GatedRepoError as error:
        raise ConfigError(
            f"{uri}: the repository is gated: accept its terms and give an HF_TOKEN that may read it"
        ) from error
    except hf_errors.RepositoryNotFoundError as error:
        raise ConfigError(f"{uri}: repository not found (or private: give an HF_TOKEN that may read it)") from error
    except hf_errors.RevisionNotFoundError as error:
        raise ConfigError(f"{uri}: revision {revision!r} not found: use an existing branch, tag or commit") from error
    except hf_errors.LocalEntryNotFoundError as error:
        if offline:
            raise ConfigError(
                f"{uri}@{revision}: not found in the offline cache (HF_HUB_OFFLINE is set): pre-populate HF_HOME "
                "or unset HF_HUB_OFFLINE"
            ) from error
        # Connection errors, timeouts and 5xx of the Hub (or the mirror) end here: a moment's outage, retried.
        raise TrainerError(f"{uri}@{revision}: the Hub is unreachable and nothing is cached: {error}") from error
    path = Path(path)
    # The cache layout is .../snapshots/<commit>: the directory name is the resolved commit.
    commit = revision if local_dir is not None else path.name
    log.info("hf_snapshot", uri=uri, revision=revision, commit=commit, offline=offline)
    return path, commit


def resolve_data(uri: str) -> Path:
    """A local file or directory with the data of ``uri``, downloading it into the cache if remote."""
    parsed = parse_uri(uri)
    if parsed.scheme in ("file", "pvc"):
        path = local_path(uri)
        if not path.exists():
            raise DataError(f"data {uri}: nothing at {path}")
        return path
    if parsed.scheme == "hf":
        if parsed.authority != "datasets" or not parsed.path:
            raise ConfigError(f"data {uri}: Hub data must be hf://datasets/org/name[/path]")
        parts = parsed.path.split("/")
        repo_id, inner = "/".join(parts[:2]), "/".join(parts[2:])
        revision = "main"
        if "@" in repo_id:
            repo_id, revision = repo_id.split("@", 1)
        # Only the named file or directory: dataset repositories can be terabytes.
        patterns = [inner, f"{inner}/*"] if inner else None
        root, _ = hf_snapshot(repo_id, revision, repo_type="dataset", uri=uri, allow_patterns=patterns)
        path = join_below(root, inner, f"the path of {uri}", ConfigError) if inner else root
        if not path.exists():
            raise DataError(f"data {uri}: no {inner} in the dataset repository")
        if not inner:
            _refuse_other_splits(root, uri)
        return path
    local, count = download_s3(parsed, cache_root() / "data", credentials_for("data"), "data", uri)
    if count == 0:
        raise DataError(f"data {uri}: no objects under that prefix")
    return local


_OTHER_SPLIT = re.compile(r"(^|[/_.-])(test|validation|valid|dev|eval)([/_.-]|$)", re.IGNORECASE)


def _refuse_other_splits(root: Path, uri: str) -> None:
    """A whole dataset repository with test or validation files: training on it would train on them too."""
    from .data.readers import source_files

    files = [relative for _, relative in source_files(root)]
    others = [name for name in files if _OTHER_SPLIT.search(name)]
    if others:
        training = [name for name in files if name not in others][:3]
        raise ConfigError(
            f"data {uri}: the repository has evaluation splits too ({', '.join(others[:3])}): name the training "
            f"files or directory in the URI, e.g. {uri.rstrip('/')}/{training[0] if training else '<path>'}"
        )


# ---------------------------------------------------------------------------------------------
# output locations


class Location(ABC):
    """A directory in local storage or S3 that the trainer writes checkpoints and artifacts to."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    @abstractmethod
    def child(self, name: str) -> Location:
        """The location of ``name`` below this one."""

    @abstractmethod
    def read_bytes(self, name: str) -> bytes | None:
        """The content of file ``name``, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, name: str, content: bytes) -> None:
        """Replace file ``name`` atomically (readers see the old or the new content, never a mix)."""

    @abstractmethod
    def list_dirs(self) -> list[str]:
        """Names of the subdirectories (prefixes on S3)."""

    @abstractmethod
    def staging_dir(self, name: str) -> Path:
        """A local directory to write ``name``'s files in before :meth:`publish` makes them visible."""

    @abstractmethod
    def upload(self, staging: Path, name: str) -> None:
        """Make the files of ``staging`` part of ``name``, still invisible (every rank calls it for its own)."""

    @abstractmethod
    def seal(self, staging: Path, name: str, marker: str, content: bytes) -> None:
        """Write ``marker`` last, making ``name`` complete, and clean up ``staging``."""

    @abstractmethod
    def delete(self, name: str, marker: str) -> None:
        """Remove ``name``, its marker first so that it is never seen half-deleted as complete."""

    @abstractmethod
    def download(self, name: str) -> Path:
        """A local directory with the files of ``name`` (the directory itself for local storage)."""

    def exists(self, name: str) -> bool:
        return self.read_bytes(name) is not None


class LocalLocation(Location):
    """A directory on a local filesystem or a mounted PVC: completion is an atomic rename."""

    def __init__(self, uri: str, root: Path):
        super().__init__(uri)
        self.root = root

    def _below(self, name: str) -> Path:
        return join_below(self.root, name, f"{self.uri}: the name")

    def child(self, name: str) -> LocalLocation:
        return LocalLocation(f"{self.uri}/{name}", self._below(name))

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self._below(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_bytes(self, name: str, content: bytes) -> None:
        target = self._below(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{unique_suffix()}")
        _write_durably(partial, content)
        os.replace(partial, target)

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def staging_dir(self, name: str) -> Path:
        # Next to the destination (same filesystem) so that sealing is a rename, not a copy. The name is
        # deterministic so that every rank of a job writes into the same one on shared storage.
        return self._below(f".partial-{name}")

    def upload(self, staging: Path, name: str) -> None:
        """Nothing to copy: staging already is on the destination's filesystem."""

    def seal(self, staging: Path, name: str, marker: str, content: bytes) -> None:
        _write_durably(staging / marker, content)
        target = self._below(name)
        if target.exists():
            # An incomplete leftover of an earlier attempt (a complete one is never re-sealed).
            _remove_tree(target, self.root)
        os.replace(staging, target)
        _fsync_dir(self.root)

    def delete(self, name: str, marker: str) -> None:
        target = self._below(name)
        if not target.exists():
            return
        (target / marker).unlink(missing_ok=True)
        _remove_tree(target, self.root)

    def download(self, name: str) -> Path:
        return self._below(name)


class S3Location(Location):
    """A prefix in an S3-compatible bucket: completion is the marker object, uploaded last."""

    def __init__(self, uri: str, bucket: str, prefix: str, credentials: Credentials, purpose: Purpose = "output"):
        super().__init__(uri)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.credentials = credentials
        self.purpose = purpose
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.credentials)
        return self._client

    def child(self, name: str) -> S3Location:
        checked_name(name, f"{self.uri}: the name")
        location = S3Location(f"{self.uri}/{name}", self.bucket, _s3_key(self.prefix, name), self.credentials)
        location._client = self._client
        return location

    def read_bytes(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=_s3_key(self.prefix, name))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise _s3_user_error(error, self.uri, self.purpose) from error

    def write_bytes(self, name: str, content: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=_s3_key(self.prefix, name), Body=content)
        except Exception as error:
            raise _s3_user_error(error, self.uri, self.purpose) from error

    def list_dirs(self) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                names.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        except Exception as error:
            raise _s3_user_error(error, self.uri, self.purpose) from error
        return sorted(names)

    def staging_dir(self, name: str) -> Path:
        # Each process stages its own files locally; only the upload meets in the bucket.
        return scratch_dir() / f"{name}-{uuid.uuid4().hex[:8]}"

    def upload(self, staging: Path, name: str) -> None:
        try:
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                key = _s3_key(_s3_key(self.prefix, name), path.relative_to(staging).as_posix())
                self.client.upload_file(str(path), self.bucket, key)
        except Exception as error:
            raise _s3_user_error(error, self.uri, self.purpose) from error
        shutil.rmtree(staging, ignore_errors=True)  # private to this process, and now in the bucket

    def seal(self, staging: Path, name: str, marker: str, content: bytes) -> None:
        key = _s3_key(_s3_key(self.prefix, name), marker)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=content)
        except Exception as error:
            raise _s3_user_error(error, self.uri, self.purpose) from error
        shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str, marker: str) -> None:
        base = _s3_key(self.prefix, name)
        self.client.delete_object(Bucket=self.bucket, Key=_s3_key(base, marker))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{base}/"):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def download(self, name: str) -> Path:
        name = checked_name(name, f"{self.uri}: the name")
        dest = scratch_dir() / "downloads" / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            s3_download(self.client, self.bucket, _s3_key(self.prefix, name), dest)
        except Exception as error:
            raise _s3_user_error(error, self.uri, self.purpose) from error
        return dest


def open_location(uri: str, purpose: Purpose = "output") -> Location:
    """The output location of ``uri`` (file://, pvc:// or s3://)."""
    parsed = parse_uri(uri)
    if parsed.scheme in ("file", "pvc"):
        return LocalLocation(uri, local_path(uri))
    if parsed.scheme == "s3":
        return S3Location(uri, parsed.authority, parsed.path, credentials_for(purpose), purpose)
    raise ConfigError(f"output {uri}: outputs go to s3://, pvc:// or file://, not {parsed.scheme}://")


def scratch_dir() -> Path:
    """Local space for staging uploads; ephemeral (an emptyDir in the pod)."""
    path = Path(os.environ.get("FINETUNE_SCRATCH_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "finetune-scratch"))  # noqa: S108 fallback outside a pod only; pods set FINETUNE_SCRATCH_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def unique_suffix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _write_durably(path: Path, content: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _remove_tree(target: Path, root: Path) -> None:
    # Rename first, so that a crash mid-removal leaves a hidden directory rather than a half-deleted one.
    doomed = root / f".deleting-{target.name}-{unique_suffix()}"
    os.replace(target, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def sync_files(staging: Path) -> None:
    """fsync every file under ``staging`` (before a marker declares them complete)."""
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
