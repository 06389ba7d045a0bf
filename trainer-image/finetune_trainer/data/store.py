"""The token store: one data source tokenized once, on disk, read in place by every rank.

Why flat numpy files and not Arrow IPC: no dependency beyond numpy (already the trainer's), an example's
tokens are one slice of one file without a decode step, and a file read by several ranks is one copy in the
page cache, shared by all of them. Arrow's strengths (nested types, columns of many kinds, interchange) are
not needed for arrays of ints. The index files are mapped; the token files, as large as the corpus, are read
by position (pread), a slice per example: mapped, each example read would also map the 64 KiB of cached
pages around it (the kernel's fault-around), resident memory growing with the corpus's size.

A store is a directory:

- ``ids.bin``: every sequence's token ids end to end (uint16 when the vocabulary fits, else uint32);
- ``mask.bin``: uint8, 1 where the loss is taken on the token (its label is the token itself, the
  only other label being IGNORE_INDEX); absent for raw text, where it is every token but the first;
- ``seq_offsets.bin``: int64, sequence ``s`` is ``ids[offsets[s]:offsets[s + 1]]``;
- ``seq_trained.bin``: int32, tokens the loss is taken on per sequence (what the planner needs);
- ``row_offsets.bin``: int64, the examples data row ``r`` became are ``row_offsets[r]`` up to
  ``row_offsets[r + 1]`` (a long text is several; a dropped or invalid row none), so splits and
  mixes work on rows as in memory;
- ``manifest.json``: the key it was built for, counts, the source's statistics (rows, invalid rows
  with file:line...), each file's size and sha256, and a seal: the sha256 of the rest of the manifest.

A preference pair is two sequences, chosen then rejected. The store is written in a temporary
directory and renamed into place whole; opening it checks the checksums and the bounds of every
offset, so a torn write, a flipped bit or a hand-edited file is a :class:`StoreCorrupt` (the
caller rebuilds the store), never an out-of-bounds read or a silently different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .sources import MAX_INVALID_EXAMPLES
from .types import IGNORE_INDEX, Example, PreferenceExample, SourceStats
from .views import ExampleView

STORE_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("ids.bin", "mask.bin", "seq_offsets.bin", "seq_trained.bin", "row_offsets.bin")
COUNTS = ("rows", "examples", "sequences", "tokens")
# The only id types a store is written with (id_dtype): unsigned, so no stored id can be negative.
ID_DTYPES = (np.dtype(np.uint16).str, np.dtype(np.uint32).str)
MAX_MANIFEST_BYTES = 1 << 20


class StoreCorrupt(Exception):
    """A store that does not match its manifest: rebuild it."""


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest type that holds every id: half the disk and page cache for vocabularies under 65,536."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _seal(manifest: dict[str, Any]) -> str:
    """The sha256 of the manifest's content without its seal: the files' checksums live in the manifest, so
    without a seal of its own a damaged byte in a count or a statistic would go unnoticed."""
    body = {key: value for key, value in manifest.items() if key != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    sealed = {**manifest, "seal": _seal(manifest)}
    (directory / MANIFEST).write_text(json.dumps(sealed, indent=1, sort_keys=True))


class TokenStore:
    """A store opened read-only: checked against its manifest, its arrays mapped."""

    def __init__(self, directory: Path, *, expected_key: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory)
        if expected_key is not None and self.manifest.get("key") != expected_key:
            raise StoreCorrupt(f"{self.directory}: built for another key")
        largest_id = _check_files(self.directory, self.manifest)
        counts = self.manifest["counts"]
        self.pairs: bool = bool(self.manifest["pairs"])
        self.has_mask: bool = bool(self.manifest["has_mask"])
        self.ids = _Slices(self.directory / "ids.bin", np.dtype(self.manifest["id_dtype"]), counts["tokens"])
        self.mask = (
            _Slices(self.directory / "mask.bin", np.dtype(np.uint8), counts["tokens"]) if self.has_mask else None
        )
        self.seq_offsets = _map(self.directory / "seq_offsets.bin", np.dtype(np.int64), counts["sequences"] + 1)
        self.seq_trained = _map(self.directory / "seq_trained.bin", np.dtype(np.int32), counts["sequences"])
        self.row_offsets = _map(self.directory / "row_offsets.bin", np.dtype(np.int64), counts["rows"] + 1)
        self._check_bounds(counts, largest_id)

    @property
    def stats(self) -> SourceStats:
        return SourceStats(**self.manifest["stats"])

    def examples(self, source: int) -> StoredExamples:
        """The store's examples, each recording ``source`` (the position of its source in the configuration)."""
        return StoredExamples(self, source)

    def _check_bounds(self, counts: dict[str, int], largest_id: int) -> None:
        # Offsets index the arrays: a store whose offsets run backwards or past the end is refused whole,
        # so no slice taken later can be out of bounds or negative.
        sequences_per_example = 2 if self.pairs else 1
        if counts["sequences"] != counts["examples"] * sequences_per_example:
            raise StoreCorrupt(f"{self.directory}: {counts['sequences']} sequences for {counts['examples']} examples")
        for name, offsets, end in (
            ("seq_offsets", self.seq_offsets, counts["tokens"]),
            ("row_offsets", self.row_offsets, counts["examples"]),
        ):
            if offsets[0] != 0 or offsets[-1] != end or (len(offsets) > 1 and np.any(np.diff(offsets) < 0)):
                raise StoreCorrupt(f"{self.directory}: {name} out of bounds")
        lengths = np.diff(self.seq_offsets)
        if np.any(self.seq_trained < 0) or np.any(self.seq_trained > lengths):
            raise StoreCorrupt(f"{self.directory}: trained-token counts out of bounds")
        vocab = int(self.manifest["key"]["tokenizer"]["vocab_size"])
        if largest_id >= vocab:
            raise StoreCorrupt(f"{self.directory}: a token id past the vocabulary ({vocab})")

    def sequence(self, index: int, source: int) -> Example:
        start, end = int(self.seq_offsets[index]), int(self.seq_offsets[index + 1])
        tokens = self.ids.read(start, end).astype(np.int64)  # uint16 would wrap IGNORE_INDEX
        ids = tokens.tolist()
        mask = self.mask.read(start, end) if self.mask is not None else None
        labels = list(ids) if mask is None else np.where(mask != 0, tokens, IGNORE_INDEX).tolist()
        if labels:
            labels[0] = IGNORE_INDEX
        return Example(input_ids=ids, labels=labels, source=source)


class StoredExamples(ExampleView):
    """The examples of one store as a sequence: an example is built from its slices when indexed."""

    def __init__(self, store: TokenStore, source: int) -> None:
        self.store = store
        self.source = source
        self.pairs = store.pairs
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.store.manifest["counts"]["examples"])

    def __getitem__(self, index: int) -> Example | PreferenceExample:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        if not self.pairs:
            return self.store.sequence(index, self.source)
        chosen = self.store.sequence(2 * index, self.source)
        return PreferenceExample(chosen, self.store.sequence(2 * index + 1, self.source), self.source)

    def measure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            lengths = np.diff(self.store.seq_offsets).astype(np.int64)
            trained = np.asarray(self.store.seq_trained, dtype=np.int64)
            if self.pairs:
                tokens = lengths[0::2] + lengths[1::2]
                longest = np.maximum(lengths[0::2], lengths[1::2])
                trained = trained[0::2] + trained[1::2]
            else:
                tokens, longest = lengths, lengths
            self._arrays = (tokens, longest, trained)
        return self._arrays


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        # Read with a bound, not after a stat: a device or a FIFO (a symlink to /dev/zero) has no size.
        with path.open("rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise StoreCorrupt(f"{path}: too large")
        manifest = json.loads(data)
    except (OSError, ValueError) as error:
        raise StoreCorrupt(f"{path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("version") != STORE_VERSION:
        raise StoreCorrupt(f"{path}: not a version {STORE_VERSION} token store")
    if manifest.get("seal") != _seal(manifest):
        raise StoreCorrupt(f"{path}: its content does not match its seal")
    if problem := _malformed(manifest):
        raise StoreCorrupt(f"{path}: {problem}")
    return manifest


def _malformed(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's shape, if anything.

    The seal is a checksum, not a signature: whoever can write the store can reseal a forged manifest.
    So every value the reader relies on is checked here: a forged one is refused (and the store
    rebuilt) instead of skipping the files' checksums (a short file list), making ids negative (a
    signed id type), or failing later with a KeyError or TypeError.
    """
    counts, files, key, stats = (manifest.get(name) for name in ("counts", "files", "key", "stats"))
    if not isinstance(counts, dict) or sorted(counts) != sorted(COUNTS) or not all(map(_natural, counts.values())):
        return "counts must be the four non-negative integers"
    if manifest.get("id_dtype") not in ID_DTYPES:
        return f"token ids must be one of {ID_DTYPES}"
    if not isinstance(manifest.get("pairs"), bool) or not isinstance(manifest.get("has_mask"), bool):
        return "pairs and has_mask must be booleans"
    expected = set(FILES) if manifest["has_mask"] else set(FILES) - {"mask.bin"}
    if not isinstance(files, dict) or set(files) != expected:
        return f"the manifest must list exactly the files {sorted(expected)}"
    for facts in files.values():
        if not isinstance(facts, dict) or not _natural(facts.get("bytes")) or not isinstance(facts.get("sha256"), str):
            return "each file needs its bytes and sha256"
    tokenizer = key.get("tokenizer") if isinstance(key, dict) else None
    if not isinstance(tokenizer, dict) or not _natural(tokenizer.get("vocab_size")):
        return "the key names no vocabulary size"
    if not isinstance(stats, dict) or not isinstance(stats.get("invalid_examples"), list):
        return "no source statistics"
    try:
        parsed = SourceStats(**stats)
    except TypeError as error:
        return f"source statistics: {error}"
    numbers = (parsed.rows, parsed.invalid_rows, parsed.truncated_rows, parsed.dropped_rows, parsed.tokens)
    lines = parsed.invalid_examples
    if (
        not all(map(_natural, numbers))
        or len(lines) > MAX_INVALID_EXAMPLES
        or not all(isinstance(x, str) for x in lines)
    ):
        return "source statistics out of bounds"
    return None


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_files(directory: Path, manifest: dict[str, Any]) -> int:
    """Every file against its size and sha256; returns the largest token id, found in the same read of ids.bin."""
    largest_id = 0
    for name, facts in manifest["files"].items():
        path = directory / name
        try:
            facts_on_disk = path.stat()
        except OSError as error:
            raise StoreCorrupt(f"{path}: {error}") from error
        # A device has no size to check and no end to hash: a symlink to /dev/zero would be read forever.
        if not stat.S_ISREG(facts_on_disk.st_mode):
            raise StoreCorrupt(f"{path}: not a regular file")
        if facts_on_disk.st_size != facts["bytes"]:
            raise StoreCorrupt(f"{path}: does not match its checksum")
        ids = np.dtype(manifest["id_dtype"]) if name == "ids.bin" else None
        digest, largest = _scan(path, ids)
        if digest != facts["sha256"]:
            raise StoreCorrupt(f"{path}: does not match its checksum")
        largest_id = max(largest_id, largest)
    return largest_id


class _Slices:
    """A file of ``count`` values of ``dtype``, read a slice at a time by position, never mapped.

    pread keeps no file position, so ranks' forked workers may share the descriptor. A file cut short after the
    open (its checksum was checked then) reads short: refused as corrupt, never a shorter example.
    """

    def __init__(self, path: Path, dtype: np.dtype, count: int) -> None:
        _expect_size(path, dtype, count)
        self.path, self.dtype, self.count = path, dtype, count
        self._descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        weakref.finalize(self, os.close, self._descriptor)

    def read(self, start: int, end: int) -> np.ndarray:
        if not 0 <= start <= end <= self.count:
            raise IndexError(f"{self.path}: values {start}:{end} of {self.count}")
        size = (end - start) * self.dtype.itemsize
        data = os.pread(self._descriptor, size, start * self.dtype.itemsize) if size else b""
        if len(data) != size:
            raise StoreCorrupt(f"{self.path}: shorter than when it was opened")
        return np.frombuffer(data, dtype=self.dtype)


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    _expect_size(path, dtype, count)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _scan(path: Path, dtype: np.dtype | None, block: int = 16 << 20) -> tuple[str, int]:
    """A file's sha256 and, as values of ``dtype`` (None: skip), its largest value, in one pass.

    The store's biggest file is checked for its checksum and for ids past the vocabulary on every open:
    one read instead of two. Read with read(), not through the map: scanning a mapped file would count
    all of it in the process's resident memory.
    """
    digest, largest = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(block):
            digest.update(chunk)
            if dtype is not None and len(chunk) >= dtype.itemsize:
                values = np.frombuffer(chunk, dtype=dtype, count=len(chunk) // dtype.itemsize)
                largest = max(largest, int(values.max()))
    return digest.hexdigest(), largest


def _expect_size(path: Path, dtype: np.dtype, count: int) -> None:
    if path.stat().st_size != count * dtype.itemsize:
        raise StoreCorrupt(f"{path}: {path.stat().st_size} bytes where {count} values of {dtype} were expected")
