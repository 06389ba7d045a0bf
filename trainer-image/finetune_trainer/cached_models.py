"""Base models through the namespace's shared cache (model_cache.py), when the operator mounted one.

The preflight mounts the cache read-write (``FINETUNE_SHARED_CACHE_DIR``, ``FINETUNE_SHARED_CACHE_MAX_BYTES``):
it resolves the model's version (an ``hf://`` commit, an ``s3://`` listing's keys, sizes and ETags), fills
the entry once for all the namespace's jobs, checks every file's sha256, and evicts. Training pods mount it
read-only (``FINETUNE_SHARED_CACHE_READONLY=1``): they take the entry of the same version when its sizes
match, and otherwise download into their own disk exactly as without a cache. ``file://`` and ``pvc://``
models are read in place either way, and so are ``hf://`` models with HF_HUB_OFFLINE (from the Hub cache:
there is nothing to download).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import log
from .errors import ConfigError
from .model_cache import CacheKey, CacheStats, SharedCache, listing_version
from .storage import (
    FetchedModel,
    _s3_user_error,
    credentials_for,
    fetch_model,
    hf_snapshot,
    hub_offline,
    parse_uri,
    s3_client,
    s3_download,
    s3_objects,
)

SHARED_CACHE_ENV = "FINETUNE_SHARED_CACHE_DIR"
MAX_BYTES_ENV = "FINETUNE_SHARED_CACHE_MAX_BYTES"
READONLY_ENV = "FINETUNE_SHARED_CACHE_READONLY"

_cache: SharedCache | None = None
_store_cache: SharedCache | None = None


def shared_cache() -> SharedCache | None:
    """This process's view of the mounted cache (its counters live as long as the process), or None."""
    global _cache
    root = os.environ.get(SHARED_CACHE_ENV)
    if not root:
        return None
    if _cache is None or _cache.root != Path(root):
        limit = os.environ.get(MAX_BYTES_ENV)
        _cache = SharedCache(Path(root), max_bytes=int(limit) if limit else None)
    return _cache


def shared_store_cache() -> SharedCache | None:
    """The mounted cache as the token stores use it: the same entries, locks and eviction as the models, its
    own counters (status.plan.cache and the operator's model-cache metrics count models only)."""
    global _store_cache
    models = shared_cache()
    if models is None:
        return None
    if _store_cache is None or _store_cache.root != models.root:
        _store_cache = SharedCache(models.root, max_bytes=models.max_bytes)
    return _store_cache


def cache_stats() -> CacheStats | None:
    cache = shared_cache()
    return cache.stats if cache is not None else None


def read_only() -> bool:
    """A training pod's mount: it reads entries, and fills and evicts none (the preflight does)."""
    return os.environ.get(READONLY_ENV, "").strip().lower() in ("1", "true", "yes")


def fetch_model_shared(uri: str, revision: str | None = None) -> FetchedModel:
    """fetch_model through the shared cache, when there is one."""
    cache, parsed = shared_cache(), parse_uri(uri)
    if cache is None or parsed.scheme in ("file", "pvc") or (parsed.scheme == "hf" and hub_offline()):
        return fetch_model(uri, revision)  # read in place: a local path, or the Hub cache when offline
    found = _from_s3(cache, uri) if parsed.scheme == "s3" else _from_hub(cache, uri, revision or "main")
    if found is None:
        return fetch_model(uri, revision)
    if not (found.path / "config.json").is_file():
        raise ConfigError(f"model.uri {uri}: no config.json there: point it at a model directory")
    return found


def _from_s3(cache: SharedCache, uri: str) -> FetchedModel | None:
    parsed = parse_uri(uri)
    bucket, prefix = parsed.authority, parsed.path
    try:
        client = s3_client(credentials_for("model"))
        objects = _listing(client, bucket, prefix)
    except Exception as error:
        raise _s3_user_error(error, uri, "model") from error
    if not objects:
        return None  # a single object, or nothing: fetch_model says which
    key = CacheKey(uri, listing_version(objects))
    if read_only():
        path = cache.readable(key)
        if path is None:
            return None
        log.info("model_from_shared_cache", uri=uri, read_only=True)
        return FetchedModel(path=path, revision=None)

    def download(directory: Path) -> None:
        try:
            s3_download(client, bucket, prefix, directory)
        except Exception as error:
            raise _s3_user_error(error, uri, "model") from error

    path = cache.get(key, download, expected_bytes=sum(size for _, size, _ in objects))
    return FetchedModel(path=path, revision=None)


def _listing(client, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
    """(relative key, size, ETag) of every object under the prefix, as s3_download takes them."""
    return [
        (relative, int(obj["Size"]), str(obj.get("ETag", ""))) for relative, obj in s3_objects(client, bucket, prefix)
    ]


def _from_hub(cache: SharedCache, uri: str, revision: str) -> FetchedModel | None:
    parsed = parse_uri(uri)
    repo_id = f"{parsed.authority}/{parsed.path}" if parsed.path else parsed.authority
    if read_only():
        # The training pods' revision is the commit the preflight pinned (status.plan): the entry's version.
        path = cache.readable(CacheKey(uri, revision))
        if path is None:
            return None
        log.info("model_from_shared_cache", uri=uri, commit=revision, read_only=True)
        return FetchedModel(path=path, revision=revision)
    _, commit = hf_snapshot(repo_id, revision, repo_type="model", uri=uri, allow_patterns=["config.json"])

    def download(directory: Path) -> None:
        hf_snapshot(repo_id, commit, repo_type="model", uri=uri, local_dir=directory)

    path = cache.get(CacheKey(uri, commit), download)
    log.info("model_from_shared_cache", uri=uri, commit=commit)
    return FetchedModel(path=path, revision=commit)
