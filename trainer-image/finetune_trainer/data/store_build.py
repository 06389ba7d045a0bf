"""Writing a token store: the source cut into chunks, tokenized by every CPU core, shards joined.

A JSONL file is cut into byte ranges of about ``CHUNK_BYTES`` that end at a newline; any other
file (JSON, CSV, Parquet, text, gzip) is one chunk, read as the in-memory path reads it. A pool
of worker processes takes the chunks in order; each reads its chunk, validates and tokenizes the
rows with :func:`sources.account_row` (the same code as without a store: bad rows are counted,
reported with file:line and judged by maxInvalidFraction exactly as before) and writes a shard.
The shards are then joined in order, checksummed on the way. Memory is one chunk per worker
plus its tokens, whatever the size of the corpus.

Line numbers: a worker numbers the lines of its range from 1; the lines of the ranges before it
are added when the results are merged (rows of a range are never split, so both counts agree).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import shutil
import signal
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from finetune_core.api.manifest import file_sha256

from . import readers
from .readers import RawRow, read_file, source_files
from .sources import MAX_INVALID_EXAMPLES, account_row
from .store import FILES, STORE_VERSION, id_dtype, write_manifest
from .tokenize import ExampleBuilder
from .types import IGNORE_INDEX, Example, PreferenceExample, SourceStats

CGROUP_ROOT = Path("/sys/fs/cgroup")
CHUNK_BYTES = 8 << 20
FLUSH_TOKENS = 1 << 20  # a shard's buffers go to disk past this many tokens
COPY_BLOCK = 8 << 20


@dataclass(frozen=True)
class Chunk:
    """A piece of a source: a byte range of a JSONL file, or a whole file of another kind."""

    number: int
    path: Path
    display: str  # how origins name the file
    start: int = 0
    end: int | None = None  # None: the whole file, by its reader
    in_directory: bool = False
    last_of_file: bool = True


@dataclass
class ChunkResult:
    number: int
    stats: SourceStats
    # The first ten invalid rows: (line in the range, reason), or (None, "origin: reason") for a whole file.
    invalid: list[tuple[int | None, str]] = field(default_factory=list)
    lines: int = 0  # lines of a JSONL range, for the next range's numbering
    examples: int = 0


@dataclass(frozen=True)
class BuildPlan:
    """What every worker needs: the format, how to tokenize, where to write."""

    uri: str
    format_name: str
    pairs: bool
    has_mask: bool
    dtype: str
    shards: Path


def chunks_of(local_path: Path, uri: str, chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """The chunks of a source in reading order (the order of :func:`readers.read_source`)."""
    local_path = Path(local_path)
    if local_path.is_dir():
        files = [(path, f"{uri.rstrip('/')}/{relative}", True) for path, relative in source_files(local_path)]
    else:
        files = [(local_path, uri, False)]
    chunks: list[Chunk] = []
    for path, display, in_directory in files:
        ranges = _ranges(path, chunk_bytes) if _splittable(path) else [(0, None)]
        for position, (start, end) in enumerate(ranges):
            last = position == len(ranges) - 1
            chunks.append(Chunk(len(chunks), path, display, start, end, in_directory, last))
    return chunks


def build_store(
    target: Path,
    *,
    key: dict[str, Any],
    uri: str,
    local_path: Path,
    format_name: str,
    builder: ExampleBuilder,
    pairs: bool,
    vocab_size: int,
    workers: int,
    chunk_bytes: int | None = None,
) -> None:
    """Write the store of one source into ``target`` (a fresh directory, renamed into place by the caller)."""
    target.mkdir(parents=True)
    shards = target / "shards"
    shards.mkdir()
    plan = BuildPlan(uri, format_name, pairs, format_name != "text", id_dtype(vocab_size).str, shards)
    chunks = chunks_of(local_path, uri, chunk_bytes or CHUNK_BYTES)
    results = list(_run(plan, builder, chunks, workers))
    stats = _merge(uri, format_name, chunks, results, builder)
    counts = _join(target, plan, results)
    shutil.rmtree(shards)
    files = {name: {"bytes": (target / name).stat().st_size, "sha256": file_sha256(target / name)} for name in FILES}
    if not plan.has_mask:
        files.pop("mask.bin")
        (target / "mask.bin").unlink()
    write_manifest(
        target,
        {
            "version": STORE_VERSION,
            "key": key,
            "pairs": pairs,
            "has_mask": plan.has_mask,
            "id_dtype": plan.dtype,
            "counts": counts,
            "stats": asdict(stats),
            "files": files,
        },
    )


def worker_count(cgroup: Path = CGROUP_ROOT) -> int:
    """The CPU cores this process may use: its CPU set, and no more than its cgroup's CPU limit.

    Kubernetes enforces a pod's CPU limit as a CFS quota, not a CPU set (unless the static CPU manager
    pins the pod): on a 192-core node a pod limited to 8 CPUs has all 192 in its affinity, and 192 forked
    workers, each holding a chunk and its tokens, would share the pod's memory limit and 8 cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup)
    return max(1, min(cores, limit) if limit else cores)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's CPU quota in whole cores, rounded up; None when there is none or it cannot be read."""
    try:  # cgroup v2: "max 100000" (no limit) or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 is no limit
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# workers

_worker_state: tuple[BuildPlan, ExampleBuilder] | None = None


def _run(plan: BuildPlan, builder: ExampleBuilder, chunks: Sequence[Chunk], workers: int) -> Iterable[ChunkResult]:
    global _worker_state
    _worker_state = (plan, builder)
    try:
        if workers <= 1 or len(chunks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            yield from map(_build_chunk, chunks)
            return
        # fork: the workers inherit the tokenizer and the chat template instead of loading them again.
        # Results are small (the tokens are in the shard files); imap keeps their order.
        context = multiprocessing.get_context("fork")
        pool = context.Pool(min(workers, len(chunks)), initializer=_worker_signals)
        try:
            yield from pool.imap(_build_chunk, chunks)
            pool.close()  # every chunk built: the workers end on the pool's sentinels
        except BaseException:
            pool.terminate()  # SIGTERM to the workers, which _worker_signals lets end them
            raise
        finally:
            pool.join()
    finally:
        _worker_state = None


def _worker_signals() -> None:
    """A worker is forked from the trainer, whose SIGTERM and SIGINT handlers only set its stop flag
    (signals.py). Inherited, they left Pool.terminate() (SIGTERM) unable to end a worker, and a worker blocked
    on the pool's task queue then held the trainer in terminate() forever (seen: a 500 MB corpus, every
    chunk written, the trainer asleep). SIGINT (Ctrl-C reaches the whole process group) is the trainer's."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build_chunk(chunk: Chunk) -> ChunkResult:
    if _worker_state is None:
        raise RuntimeError("a chunk is built by _run, which sets the worker state")
    plan, builder = _worker_state
    result = ChunkResult(chunk.number, SourceStats(uri=plan.uri, format=plan.format_name))
    writer = _ShardWriter(plan.shards / f"{chunk.number:08d}", plan)
    stats = result.stats
    for raw in _rows(chunk, result):
        before = len(stats.invalid_examples)
        # A ConfigError (an unusable chat template) reaches the pipeline, which names the field and URI.
        tokenized = account_row(stats, raw, plan.format_name, builder, 0)
        if len(stats.invalid_examples) > before:
            entry = stats.invalid_examples.pop()
            # The merge keeps the source's first ten: a chunk of a million bad lines sends ten back, not a million.
            if len(result.invalid) < MAX_INVALID_EXAMPLES:
                if chunk.end is None:  # a whole file: its reader spelled the origin already
                    result.invalid.append((None, entry))
                else:  # numbered within the range: renumbered when merged
                    result.invalid.append((int(raw.origin.rsplit(":", 1)[1]), entry[len(raw.origin) + 2 :]))
        if tokenized is not None:  # usable rows only, as LoadedSource.rows holds
            writer.add_row(tokenized.examples)
    writer.close()
    result.examples = writer.examples
    return result


def _rows(chunk: Chunk, result: ChunkResult) -> Iterable[RawRow]:
    if chunk.end is None:
        yield from read_file(chunk.path, chunk.display)
        return
    lines = _Counted(readers.jsonl_lines(chunk.path, chunk.start, chunk.end))
    yield from readers.jsonl_rows(lines, chunk.display)
    result.lines = lines.count


class _Counted:
    """An iterator that counts what it gave: the lines of a range, blank ones included."""

    def __init__(self, items: Iterator[bytes]) -> None:
        self.items, self.count = items, 0

    def __iter__(self) -> Iterator[bytes]:
        for item in self.items:
            self.count += 1
            yield item


class _ShardWriter:
    """Appends a chunk's sequences to its shard files, a buffer at a time."""

    def __init__(self, prefix: Path, plan: BuildPlan) -> None:
        self.prefix, self.plan = prefix, plan
        self.ids, self.mask = array("I"), array("B")
        self.lengths, self.trained, self.row_examples = array("q"), array("i"), array("q")
        self.examples = 0

    def add_row(self, examples: Sequence[Example] | Sequence[PreferenceExample]) -> None:
        for example in examples:
            sequences = (example.chosen, example.rejected) if isinstance(example, PreferenceExample) else (example,)
            for sequence in sequences:
                self._add_sequence(sequence)
        self.examples += len(examples)
        self.row_examples.append(len(examples))
        if len(self.ids) >= FLUSH_TOKENS:
            self._flush()

    def _add_sequence(self, sequence: Example) -> None:
        ids, labels = sequence.input_ids, sequence.labels
        self.ids.extend(ids)
        self.lengths.append(len(ids))
        if not self.plan.has_mask:
            # Raw text: every label is its token but the first (tokenize.py), so the mask is implied.
            self.trained.append(max(len(ids) - 1, 0))
            return
        if any(label not in (IGNORE_INDEX, token) for label, token in zip(labels, ids, strict=True)):
            raise ValueError("a label that is neither its token nor IGNORE_INDEX cannot be stored as a mask")
        mask = [label != IGNORE_INDEX for label in labels]
        if mask:
            mask[0] = False
        self.mask.extend(mask)
        self.trained.append(sum(mask))

    def _flush(self) -> None:
        dtype = np.dtype(self.plan.dtype)
        for suffix, values, kind in (
            ("ids", self.ids, dtype),
            ("mask", self.mask, np.uint8),
            ("lengths", self.lengths, np.int64),
            ("trained", self.trained, np.int32),
            ("rows", self.row_examples, np.int64),
        ):
            with open(f"{self.prefix}.{suffix}", "ab") as stream:
                np.frombuffer(values, dtype=np.dtype(values.typecode)).astype(kind).tofile(stream)
            del values[:]

    def close(self) -> None:
        self._flush()


# ---------------------------------------------------------------------------------------------
# merging


def _merge(
    uri: str, format_name: str, chunks: Sequence[Chunk], results: Sequence[ChunkResult], builder: ExampleBuilder
) -> SourceStats:
    """The source's statistics as one sequential read would have counted them."""
    stats = SourceStats(uri=uri, format=format_name)
    lines_before, file_rows = 0, 0
    for chunk, result in zip(chunks, results, strict=True):
        part = result.stats
        stats.rows += part.rows
        stats.invalid_rows += part.invalid_rows
        stats.truncated_rows += part.truncated_rows
        stats.dropped_rows += part.dropped_rows
        stats.tokens += part.tokens
        for line, reason in result.invalid:
            if len(stats.invalid_examples) < MAX_INVALID_EXAMPLES:
                stats.invalid_examples.append(
                    reason if line is None else f"{chunk.display}:{lines_before + line}: {reason}"
                )
        lines_before += result.lines
        file_rows += part.rows
        if chunk.last_of_file:
            if chunk.in_directory and file_rows == 0:
                # As read_source: an empty file among many is an invalid row, so a truncated export is noticed.
                account_row(stats, RawRow(f"{chunk.display}:1", error="empty file"), format_name, builder, 0)
            lines_before, file_rows = 0, 0
    return stats


def _join(target: Path, plan: BuildPlan, results: Sequence[ChunkResult]) -> dict[str, int]:
    """The shards end to end in the store's files; lengths become offsets, each shard's shifted by those before."""
    counts = {"rows": 0, "examples": 0, "sequences": 0, "tokens": 0}
    prefixes = [plan.shards / f"{result.number:08d}" for result in results]
    for suffix, name in (("ids", "ids.bin"), ("mask", "mask.bin"), ("trained", "seq_trained.bin")):
        with (target / name).open("wb") as out:
            for prefix in prefixes:
                part = Path(f"{prefix}.{suffix}")
                if part.exists():
                    with part.open("rb") as stream:
                        shutil.copyfileobj(stream, out, COPY_BLOCK)
                    part.unlink()
    for suffix, name, total in (("lengths", "seq_offsets.bin", "tokens"), ("rows", "row_offsets.bin", "examples")):
        base, entries = 0, 0
        with (target / name).open("wb") as out:
            np.zeros(1, dtype=np.int64).tofile(out)
            for prefix in prefixes:
                part = Path(f"{prefix}.{suffix}")
                if not part.exists():
                    continue
                values = np.fromfile(part, dtype=np.int64)
                (np.cumsum(values) + base).tofile(out)
                base += int(values.sum())
                entries += len(values)
                part.unlink()
        counts[total] = base
        counts["sequences" if suffix == "lengths" else "rows"] = entries
    return counts


def _splittable(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(readers.JSONL_SUFFIXES)


def _ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int | None]]:
    """Byte ranges of about ``chunk_bytes`` that each end just after a newline (the last at the end)."""
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as stream:
        while bounds[-1] + chunk_bytes < size:
            stream.seek(bounds[-1] + chunk_bytes)
            stream.readline()  # to the end of the line the cut falls in
            position = stream.tell()
            if position >= size:
                break
            bounds.append(position)
    bounds.append(size)
    return [(start, end) for start, end in itertools.pairwise(bounds)]
