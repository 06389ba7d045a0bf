"""A cache of downloads shared by the jobs of one namespace: a directory on a ReadWriteMany volume.

Layout under the root (the volume's mount)::

    entries/<key>/manifest.json   uri, version, each file's size and sha256, bytes, last use
    entries/<key>/files/...       the download, as the store holds it
    locks/<key>.lock              held while one pod fills <key> (O_EXCL create; a heartbeat keeps it fresh)
    staging/, trash/              fills in progress, and entries on their way out

An entry is keyed by (uri, version): the resolved commit of a Hub model, a digest of the S3 listing's
keys, sizes and ETags. It appears only whole: it is downloaded into staging/, its manifest written, and the
directory renamed into entries/ (a rename is atomic on local file systems and on NFS), so a reader never
sees half an entry. A reader that can write (the preflight) checks every file's size and sha256 before it
uses an entry, removes a corrupted one and fills it again; a read-only reader (the training pods) checks
the sizes and, on any doubt, does not use the entry (it downloads into its own disk, as without a cache).

Eviction is least-recently-used by the manifest's ``lastUsed`` (written by the writing reader at each use),
done by the writer before it publishes a new entry, down to ``max_bytes`` with the new entry counted; an
entry used in the last ``EVICTION_GRACE_SECONDS`` is kept even over the limit (its training pods are about
to read it). A pod reading an entry that is evicted under it fails, and its retry downloads again.
Everything here runs with the tenant's own identity, on the tenant's own volume: the operator mounts no
tenant volume, so eviction is the preflight's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_core.api.manifest import file_sha256
from finetune_core.uri import shown

from . import log

MANIFEST = "manifest.json"
FILES = "files"
LOCK_STALE_SECONDS = 120.0  # a lock not refreshed for this long belongs to a pod that died
LOCK_WAIT_SECONDS = 3600.0  # how long a pod waits for another's fill of the same entry (a large model)
# An entry used this recently is not evicted: its job's training pods start after its preflight (queued in
# Kueue, maybe longer: then they find the entry gone and download it themselves).
EVICTION_GRACE_SECONDS = 1800.0
# The volume is the namespace's: any of its pods may plant a huge manifest, a tree of millions of names, or a
# link, FIFO or device where a file should be. Reads are bounded and walks counted; nothing is followed.
MAX_MANIFEST_BYTES = 16 << 20  # about 100,000 files' names, sizes and sha256
MAX_ENTRY_NAMES = 100_000  # files and directories under one entry (a model has tens)
MAX_LOCK_BYTES = 1024  # a token is host:pid:uuid; a lock file's content is compared, never trusted


class CacheBusy(Exception):
    """Another pod held the entry's lock for longer than a pod waits."""


@dataclass(frozen=True)
class CacheKey:
    uri: str
    version: str  # a commit, or a digest of the listing: what makes two downloads of the uri the same bytes

    @property
    def name(self) -> str:
        return hashlib.sha256(json.dumps([self.uri, self.version]).encode()).hexdigest()[:40]


def listing_version(objects: Sequence[tuple[str, int, str]]) -> str:
    """The version of an S3 prefix: its objects' (relative key, size, ETag), in key order."""
    digest = hashlib.sha256(json.dumps(sorted(objects)).encode()).hexdigest()
    return f"listing-sha256:{digest}"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes: int = 0  # downloaded into the cache
    evictions: int = 0
    refills: int = 0  # corrupted entries found and filled again

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("hits", "misses", "bytes", "evictions", "refills")}


@dataclass(frozen=True)
class EntryUse:
    name: str
    bytes: int
    last_used: float


# -- pure parts: the manifest, its check, the LRU choice -----------------------------------------------------


def manifest_of(files: Path, key: CacheKey, now: float) -> dict[str, Any]:
    """Sizes and sha256 of every regular file under ``files``; links and other kinds are not cached."""
    entries = {}
    for path in sorted(files.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        entries[path.relative_to(files).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    total = sum(f["size"] for f in entries.values())
    return {"uri": key.uri, "version": key.version, "files": entries, "bytes": total, "lastUsed": now}


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """The entry's manifest when it has the shape this module writes, else None (absent, too large, a link,
    not JSON, or a value of the wrong type)."""
    data = read_regular(entry / MANIFEST, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    files, last_used = manifest["files"], manifest.get("lastUsed")
    well_formed = (
        isinstance(manifest.get("uri"), str)
        and isinstance(manifest.get("version"), str)
        and _natural(manifest.get("bytes"))
        and isinstance(last_used, int | float)
        and not isinstance(last_used, bool)
        and math.isfinite(last_used)
        and len(files) <= MAX_ENTRY_NAMES
        and all(
            isinstance(f, dict) and _natural(f.get("size")) and isinstance(f.get("sha256"), str) for f in files.values()
        )
    )
    return manifest if well_formed else None


def problems(entry: Path, key: CacheKey, *, hashes: bool) -> list[str]:
    """What is wrong with the entry at ``entry`` (nothing: it may be used). ``hashes``: sha256 too, not sizes only."""
    root = entry / FILES
    if not (_is_real_directory(entry) and _is_real_directory(root)):
        return ["not a directory of the cache"]  # a planted link would be read wherever it points
    manifest = read_manifest(entry)
    if manifest is None:
        return ["no readable manifest"]
    files = manifest["files"]
    if manifest["uri"] != key.uri or manifest["version"] != key.version:
        return ["the manifest is of another download"]
    listed = _names_below(root)
    if listed is None:
        return [f"more than {MAX_ENTRY_NAMES} names under the entry"]
    found = [f"{shown(extra)}: not in the manifest" for extra in sorted(listed - set(files))]
    for name, expected in files.items():
        path = root / name  # only a name the walk found is looked at: it is below root
        facts = _lstat(path) if name in listed else None
        if facts is None or not stat.S_ISREG(facts.st_mode):
            found.append(f"{shown(name)}: missing")
        elif facts.st_size != expected["size"]:
            found.append(f"{shown(name)}: {facts.st_size} bytes, the manifest says {expected['size']}")
        elif hashes and file_sha256(path) != expected["sha256"]:
            found.append(f"{shown(name)}: sha256 differs from the manifest")
    return found


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _is_real_directory(path: Path) -> bool:
    facts = _lstat(path)
    return facts is not None and stat.S_ISDIR(facts.st_mode)


class _TooManyNames(Exception):
    pass


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk below ``root``, links never followed (a linked directory is a name), raising _TooManyNames past
    MAX_ENTRY_NAMES names of any kind: a tenant's pod may plant millions."""
    seen = 0
    for directory, subdirectories, names in os.walk(root):
        seen += len(subdirectories) + len(names)
        if seen > MAX_ENTRY_NAMES:
            raise _TooManyNames
        yield Path(directory), subdirectories, names


def _names_below(root: Path) -> set[str] | None:
    """The relative names of everything but directories below ``root`` (links listed, never followed), or
    None past MAX_ENTRY_NAMES names."""
    found: set[str] = set()
    try:
        for here, subdirectories, names in _walk(root):
            linked = [d for d in subdirectories if (here / d).is_symlink()]
            found.update((here / name).relative_to(root).as_posix() for name in names + linked)
    except _TooManyNames:
        return None
    return found


def read_regular(path: Path, limit: int) -> bytes | None:
    """The content of the regular file ``path`` when it holds at most ``limit`` bytes, else None. Opened
    without following a link and without blocking, so a planted FIFO or device is never waited on or read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        data = stream.read(limit + 1)
    return data if len(data) <= limit else None


def evictions(
    entries: Sequence[EntryUse], max_bytes: int, incoming: int, protected_since: float = float("inf")
) -> list[str]:
    """The least recently used entries to remove so that what stays plus ``incoming`` fits ``max_bytes``
    (an incoming entry larger than the limit empties the rest, and is kept). Entries used at or after
    ``protected_since`` are never chosen, even over the limit: a job planned minutes ago has training pods
    about to read its entry."""
    total = sum(e.bytes for e in entries) + incoming
    chosen = []
    for entry in sorted(entries, key=lambda e: (e.last_used, e.name)):
        if entry.last_used >= protected_since:
            break
        if total <= max_bytes:
            break
        chosen.append(entry.name)
        total -= entry.bytes
    return chosen


# -- the lock -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(
    path: Path,
    *,
    stale_after: float = LOCK_STALE_SECONDS,
    wait: float = LOCK_WAIT_SECONDS,
    poll: float = 0.5,
    clock: Callable[[], float] = time.time,
) -> Iterator[None]:
    """Hold ``path`` as a lock file: created with O_EXCL (atomic on NFS v3+ as on local disks), refreshed by a
    heartbeat while held, taken over once not refreshed for ``stale_after`` seconds (its pod was killed)."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = clock() + wait
    while not _try_create(path, token):
        _take_over_if_stale(path, stale_after, clock)
        if clock() > deadline:
            raise CacheBusy(f"{path.name} held for more than {wait:.0f}s by another pod")
        time.sleep(poll)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_refresh, args=(path, token, stale_after / 4, stop), daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        if _read(path) == token:
            path.unlink(missing_ok=True)


def _try_create(path: Path, token: str) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as stream:
        stream.write(token)
    return True


def _read(path: Path) -> str | None:
    """A lock's token, or None (absent, a link, a FIFO, too large, not text): only ever compared."""
    data = read_regular(path, MAX_LOCK_BYTES)
    return data.decode(errors="replace") if data is not None else None


def _take_over_if_stale(path: Path, stale_after: float, clock: Callable[[], float]) -> None:
    """Move a stale lock aside by an atomic rename; should the one moved be another's fresh lock (it was
    replaced between the look and the rename), it is put back with link(), which never overwrites."""
    facts = _lstat(path)
    if facts is None:
        return
    age, judged = clock() - facts.st_mtime, _read(path)
    if age <= stale_after:
        return
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        path.rename(aside)
    except OSError:
        return  # another waiter moved it first
    if _read(aside) != judged:
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)
    log.info("cache_lock_taken_over", lock=path.name, idle_seconds=round(age))


def _refresh(path: Path, token: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        if _read(path) != token:
            return  # taken over: this pod was too slow to say it lived; its fill still only renames whole entries
        with contextlib.suppress(OSError):
            os.utime(path)


# -- the cache --------------------------------------------------------------------------------------------------


@dataclass
class SharedCache:
    root: Path
    max_bytes: int | None = None
    stats: CacheStats = field(default_factory=CacheStats)
    clock: Callable[[], float] = time.time
    stale_after: float = LOCK_STALE_SECONDS
    wait: float = LOCK_WAIT_SECONDS
    eviction_grace: float = EVICTION_GRACE_SECONDS

    def entry(self, key: CacheKey) -> Path:
        return self.root / "entries" / key.name

    def readable(self, key: CacheKey) -> Path | None:
        """The entry's files for a read-only reader: whole by their sizes, or None (then download as without a cache)."""
        entry = self.entry(key)
        if not entry.is_dir():
            return None
        found = problems(entry, key, hashes=False)
        if found:
            log.warning("cache_entry_unusable", uri=key.uri, problems=found[:5])
            return None
        return entry / FILES

    def get(self, key: CacheKey, download: Callable[[Path], None], expected_bytes: int = 0) -> Path:
        """The entry's files, filled by ``download(directory)`` under the entry's lock when absent or corrupted."""
        entry = self.entry(key)
        if entry.is_dir() and not problems(entry, key, hashes=True):
            return self._hit(key)
        with locked(self.root / "locks" / f"{key.name}.lock", stale_after=self.stale_after, wait=self.wait):
            if os.path.lexists(entry):  # a planted link or file too: the new entry is renamed onto its name
                found = problems(entry, key, hashes=True)
                if not found:
                    return self._hit(key)  # filled by another pod while this one waited
                log.warning("cache_entry_corrupted", uri=key.uri, problems=found[:5])
                self._remove(entry)
                self.stats.refills += 1
            self.stats.misses += 1
            self._make_room(expected_bytes)
            staging = self.root / "staging" / f"{key.name}.{uuid.uuid4().hex}"
            (staging / FILES).mkdir(parents=True)
            try:
                download(staging / FILES)
                manifest = manifest_of(staging / FILES, key, self.clock())
                (staging / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
                self._make_room(manifest["bytes"])
                entry.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(entry)
            finally:
                if staging.exists():
                    self._remove(staging)
            self.stats.bytes += manifest["bytes"]
            log.info("cache_filled", uri=key.uri, bytes=manifest["bytes"], files=len(manifest["files"]))
            return entry / FILES

    def _hit(self, key: CacheKey) -> Path:
        self.stats.hits += 1
        entry = self.entry(key)
        self._touch(entry)
        log.info("cache_hit", uri=key.uri)
        return entry / FILES

    def _touch(self, entry: Path) -> None:
        """lastUsed, written as a whole new manifest (rename): a concurrent reader reads the old or the new."""
        try:
            manifest = read_manifest(entry)
            if manifest is None:
                raise ValueError(entry)
            manifest["lastUsed"] = self.clock()
            written = entry / f".{MANIFEST}.{uuid.uuid4().hex}"
            written.write_text(json.dumps(manifest, sort_keys=True))
            written.replace(entry / MANIFEST)
        except (OSError, ValueError):
            # Evicted by another pod's fill in between (it had not been used for the grace period): this
            # pod's reads may fail, and its retry downloads the model again.
            log.warning("cache_entry_vanished", entry=entry.name)

    def uses(self) -> list[EntryUse]:
        found = []
        entries = self.root / "entries"
        for entry in sorted(entries.iterdir()) if entries.is_dir() else []:
            if not _is_real_directory(entry):
                found.append(EntryUse(entry.name, 0, 0.0))  # a planted link or file: the first to go
            elif (manifest := read_manifest(entry)) is not None:
                found.append(EntryUse(entry.name, manifest["bytes"], float(manifest["lastUsed"])))
            else:
                found.append(EntryUse(entry.name, _size(entry), 0.0))  # unreadable: the first to go
        return found

    def _make_room(self, incoming: int) -> None:
        """Called with the entry's lock held and the entry absent from entries/: it is never its own victim."""
        if self.max_bytes is None:
            return
        for name in evictions(self.uses(), self.max_bytes, incoming, self.clock() - self.eviction_grace):
            self._remove(self.root / "entries" / name)
            self.stats.evictions += 1
            log.info("cache_evicted", entry=name)

    def _remove(self, directory: Path) -> None:
        """Renamed out of the way first (one atomic step), then deleted: never seen half-deleted."""
        trash = self.root / "trash" / uuid.uuid4().hex
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.rename(trash)
        except FileNotFoundError:
            return  # another pod removed it
        if trash.is_symlink() or not trash.is_dir():
            trash.unlink(missing_ok=True)  # rmtree refuses a link, and would leave it in trash/
        else:
            shutil.rmtree(trash, ignore_errors=True)


def _size(directory: Path) -> int:
    """The bytes of the regular files below ``directory`` (a link counts nothing), the first MAX_ENTRY_NAMES
    names only."""
    total = 0
    with contextlib.suppress(_TooManyNames):
        for here, _, names in _walk(directory):
            for name in names:
                with contextlib.suppress(OSError):
                    facts = (here / name).lstat()
                    total += facts.st_size if stat.S_ISREG(facts.st_mode) else 0
    return total
