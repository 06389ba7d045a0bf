"""Where token stores live, what they are keyed by, and building one only when it is missing or broken.

With the namespace's shared cache mounted (cached_models.py) a store is an entry of that cache, keyed by
the sha256 of its key: the CPU preflight builds it there once (or finds it, every file's sha256 checked), and
the training pods, which mount the cache read-only, open it from there and tokenize nothing; so do their
retries and resumes, and every later job of the namespace with the same data and tokenizer. The cache's
lock, whole-entry rename and LRU eviction are the models'. A training pod that finds no sound entry builds
the store itself, as without a cache. Without a shared cache stores go under
``<cache>/token-stores/<sha256 of the key>``: the trainer's cache directory, which the operator makes the
pod's own emptyDir, so the ranks of a pod share a store and a retry or resume, a new pod, builds it again.

The key is every input that changes the tokens: the source's URI and its files (relative path, size, and
the S3 object's ETag beside a download, otherwise the modification time, which differs between two pods'
downloads of one object), the declared format, the objective's kind of row, the tokenizer (its serialised
vocabulary and merges, special tokens), the chat template, maxSeqLength and overlongRows.

Ranks: run.py loads the data with the node's local main process first, so it builds the store
while the others wait, and they find it built. A store is renamed into place whole, so a reader
never sees a half-written one, and two writers (two jobs with one cache) both end with a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from .. import log
from ..errors import ConfigError
from ..model_cache import CacheKey, read_regular
from .readers import source_files
from .store import STORE_VERSION, StoreCorrupt, TokenStore
from .store_build import build_store, worker_count
from .tokenize import ExampleBuilder

STORES_DIR = "token-stores"
SHARED_STORE_DIR = "store"  # inside a shared cache entry's files/
MAX_ETAG_BYTES = 1024


def token_store_root() -> Path | None:
    """The trainer's cache (the job's scratch in a pod); None when FINETUNE_TOKEN_STORE=off (tokenize in memory)."""
    if os.environ.get("FINETUNE_TOKEN_STORE", "on").strip().lower() in ("off", "0", "false"):
        return None
    from ..storage import cache_root  # storage imports data.readers: imported here, not at module level

    return cache_root()


def store_key(
    *,
    uri: str,
    local_path: Path,
    format_name: str,
    pairs: bool,
    tokenizer: Any,
    builder: ExampleBuilder,
    max_seq_length: int,
    overlong: str,
) -> dict[str, Any]:
    """Everything the store's tokens depend on (hashes where the input is large)."""
    return {
        "version": STORE_VERSION,
        "uri": uri,
        "files": _fingerprint(uri, Path(local_path)),
        "format": format_name,
        "pairs": pairs,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": _sha256(_chat_template(builder)) if format_name != "text" else None,
        "max_seq_length": max_seq_length,
        "overlong": overlong,
    }


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialised = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {
        "sha256": _sha256(serialised),
        "vocab_size": len(tokenizer),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
    }


def open_or_build(root: Path, key: dict[str, Any], *, workers: int | None = None, **build: Any) -> TokenStore:
    """The store for ``key`` under ``root``: opened when it is there and sound, else (re)built first."""
    digest = _sha256(json.dumps(key, sort_keys=True))
    shared = _through_shared_cache(key, digest, workers, build)
    if shared is not None:
        return shared
    directory = Path(root) / STORES_DIR / digest
    if directory.exists():
        try:
            return TokenStore(directory, expected_key=key)
        except StoreCorrupt as error:
            log.warning("token_store_corrupt", uri=key["uri"], reason=str(error))
            shutil.rmtree(directory, ignore_errors=True)
    temporary = directory.with_name(f"{digest}.partial-{_unique()}")
    try:
        build_store(temporary, key=key, workers=workers or worker_count(), **build)
        try:
            temporary.rename(directory)
        except OSError:  # another writer was first: its store is the same
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    log.info("token_store_built", uri=key["uri"], path=str(directory))
    return TokenStore(directory, expected_key=key)


def _through_shared_cache(
    key: dict[str, Any], digest: str, workers: int | None, build: dict[str, Any]
) -> TokenStore | None:
    """The store as an entry of the namespace's shared cache: filled by the preflight, read by the training pods.
    None without a cache, or when no entry that passes the store's own checks is found (a read-only pod finds
    none, or a tenant planted one that matches its cache manifest only): the pod then builds its own."""
    from ..cached_models import read_only, shared_store_cache  # imports storage, as above

    cache = shared_store_cache()
    if cache is None:
        return None
    cache_key = CacheKey(f"token-store:{key['uri']}", digest)
    reading = read_only()

    def fill(directory: Path) -> None:
        build_store(directory / SHARED_STORE_DIR, key=key, workers=workers or worker_count(), **build)

    found = cache.readable(cache_key) if reading else cache.get(cache_key, fill)
    if found is None:
        return None
    try:
        store = TokenStore(found / SHARED_STORE_DIR, expected_key=key)
    except (StoreCorrupt, OSError) as error:
        log.warning("token_store_unusable", uri=key["uri"], reason=str(error)[:300])
        return None
    log.info("token_store_from_shared_cache", uri=key["uri"], read_only=reading)
    return store


def _fingerprint(uri: str, path: Path) -> list[list[Any]]:
    """(relative path, size, version) of each file. For an S3 source the version is the ETag its download
    recorded (storage.etag_sidecar), so that two pods' downloads of one object agree; for any other source,
    whose files may sit beside anything the tenant put there, the modification time."""
    from ..storage import etag_sidecar, parse_uri  # storage imports data.readers, as above

    if path.is_dir():
        files = [(file, relative, etag_sidecar(path, relative)) for file, relative in source_files(path)]
    else:
        files = [(path, path.name, etag_sidecar(path))]
    from_s3 = parse_uri(uri).scheme == "s3"
    facts = []
    for file, relative, sidecar in files:
        stat = file.stat()
        etag = _recorded_etag(sidecar) if from_s3 else None
        facts.append([relative, stat.st_size, f"etag:{etag}" if etag else stat.st_mtime_ns])
    return facts


def _recorded_etag(sidecar: Path) -> str | None:
    data = read_regular(sidecar, MAX_ETAG_BYTES)  # bounded, no link followed
    if data is None:
        return None
    return data.decode(errors="replace").strip() or None


def _chat_template(builder: ExampleBuilder) -> str:
    try:
        return str(builder.chat.template)
    except ConfigError:  # no template: the rows that need one were refused before this
        return ""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _unique() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
