"""Where token stores live, what they are keyed by, and building one only when it is missing or broken.

Stores go under ``<cache>/token-stores/<sha256 of the key>``: the trainer's cache directory, which
the operator makes the pod's own emptyDir, so the ranks of a pod share a store and a store is never
read by another tenant's job. Trainer pods are not restarted in place (restartPolicy Never): a retry
or a resume is a new pod that builds its stores again, unless the cache is a volume that outlives the
pod (none the operator mounts today). The key is every
input that changes the tokens: the source's URI and its files (relative path, size, modification
time), the declared format, the objective's kind of row, the tokenizer (its serialised vocabulary
and merges, special tokens), the chat template, maxSeqLength and overlongRows.

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
from .readers import source_files
from .store import STORE_VERSION, StoreCorrupt, TokenStore
from .store_build import build_store, worker_count
from .tokenize import ExampleBuilder

STORES_DIR = "token-stores"


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
        "files": _fingerprint(Path(local_path)),
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


def _fingerprint(path: Path) -> list[list[Any]]:
    files = source_files(path) if path.is_dir() else [(path, path.name)]
    facts = []
    for file, relative in files:
        stat = file.stat()
        facts.append([relative, stat.st_size, stat.st_mtime_ns])
    return facts


def _chat_template(builder: ExampleBuilder) -> str:
    try:
        return str(builder.chat.template)
    except ConfigError:  # no template: the rows that need one were refused before this
        return ""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _unique() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
