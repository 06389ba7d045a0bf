"""Reading the rows of a data source: a local file, or a directory of files read recursively.

Every row keeps its origin as "file:line" so that a problem can be reported where the user can
find it. Origins are spelled with the source's URI, not with the local path the storage layer
downloaded it to: the user knows ``s3://bucket/train/part-1.jsonl``, not ``/tmp/cache/ab12/part-1.jsonl``.

How origins are numbered:
- JSONL and CSV: ``uri:LINE``, the 1-based line the row starts on (the CSV header is line 1);
- JSON (a list of objects, or an object whose ``data`` is that list) and Parquet: ``uri:row N``,
  the 0-based index of the row, as ``jq '.[N]'`` and ``pyarrow.Table.slice(N)`` count;
- text files: one document per file (continued pre-training wants whole documents; long ones are
  split into maxSeqLength chunks later), ``uri:1``.

Files compressed with gzip (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``, ``.txt.gz``) are read too. In a
directory, hidden files (``.gitattributes``), marker files (``_SUCCESS``) and files of other types
(``README.md``) are skipped, so a dataset exported by Spark or cloned from a hub reads as it is.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv",)
TEXT_SUFFIXES = (".txt",)
PARQUET_SUFFIXES = (".parquet",)
COMPRESSIBLE_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + TEXT_SUFFIXES
SUPPORTED_SUFFIXES = COMPRESSIBLE_SUFFIXES + PARQUET_SUFFIXES

PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class RawRow:
    """One row as read, before its format is known: a decoded value, or why it could not be decoded."""

    origin: str  # "uri:line" or "uri:row N"
    value: Any = None
    error: str | None = None  # set when the row could not be decoded (malformed JSON, bad encoding...)


def read_source(local_path: Path, uri: str) -> Iterator[RawRow]:
    """The rows of a source that the storage layer made local; ``uri`` is what origins are spelled with.

    A directory is read recursively in sorted order of its relative paths, so every machine and
    every rank sees the rows in the same order.
    """
    local_path = Path(local_path)
    if local_path.is_dir():
        for file, relative in source_files(local_path):
            display, empty = f"{uri.rstrip('/')}/{relative}", True
            for row in read_file(file, display):
                empty = False
                yield row
            if empty:  # one of many files: counted and shown, so that a truncated export is noticed
                yield RawRow(f"{display}:1", error="empty file")
    elif local_path.is_file():
        if _kind(local_path) is None:
            raise DataError(
                f"{uri}: unsupported file type; data files must end in one of {', '.join(SUPPORTED_SUFFIXES)} "
                "(optionally .gz)"
            )
        yield from read_file(local_path, uri)
    else:
        raise DataError(f"{uri}: not found (resolved to {local_path})")


def source_files(directory: Path) -> list[tuple[Path, str]]:
    """The data files below ``directory`` with their relative POSIX paths, sorted by those paths."""
    files = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue
        if path.is_file() and _kind(path) is not None:
            files.append((path, relative.as_posix()))
    return sorted(files, key=lambda item: item[1])


def read_file(path: Path, display: str) -> Iterator[RawRow]:
    """The rows of one file, by its type; ``display`` names the file in origins."""
    kind = _kind(path)
    if kind == "jsonl":
        yield from _read_jsonl(path, display)
    elif kind == "json":
        yield from _read_json(path, display)
    elif kind == "csv":
        yield from _read_csv(path, display)
    elif kind == "text":
        yield from _read_text(path, display)
    elif kind == "parquet":
        yield from _read_parquet(path, display)
    else:
        raise DataError(f"{display}: unsupported file type")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
        if not name.endswith(COMPRESSIBLE_SUFFIXES):
            return None
    for kind, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("json", JSON_SUFFIXES),
        ("csv", CSV_SUFFIXES),
        ("text", TEXT_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


UTF8_BOM = b"\xef\xbb\xbf"


def _read_bytes(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    else:
        data = path.read_bytes()
    # Notepad and PowerShell start UTF-8 files with a byte-order mark: not part of the first row.
    return data.removeprefix(UTF8_BOM)


def _read_jsonl(path: Path, display: str) -> Iterator[RawRow]:
    # Streamed, and decoded line by line: one badly encoded line is one invalid row, not a lost file.
    yield from jsonl_rows(jsonl_lines(path, 0, None), display)


def jsonl_rows(lines: Iterable[bytes], display: str) -> Iterator[RawRow]:
    """Decoded rows of JSONL lines, numbered from 1 (the token store's builder, reading a byte range of a
    file, adds the lines of the ranges before it)."""
    for number, raw_line in enumerate(lines, start=1):
        origin = f"{display}:{number}"
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield RawRow(origin, error=f"not valid UTF-8 (byte {error.start})")
            continue
        if not line.strip():
            continue
        try:
            yield RawRow(origin, value=json.loads(line))
        except json.JSONDecodeError as error:
            yield RawRow(origin, error=f"malformed JSON: {error.msg} (column {error.colno})")


def jsonl_lines(path: Path, start: int, end: int | None) -> Iterator[bytes]:
    """The lines of ``bytes.splitlines`` (which also ends a line at a lone CR), read in bounded memory.

    With ``end``, the lines of the byte range ``[start, end)`` only: a range starts at the file's start
    or just after a newline and ends just after one, so its lines are whole."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        if start:
            stream.seek(start)
        remaining = None if end is None else end - start
        first = start == 0
        while remaining is None or remaining > 0:
            line = stream.readline() if remaining is None else stream.readline(remaining)
            if not line:
                return
            if remaining is not None:
                remaining -= len(line)
            if first:
                # Notepad and PowerShell start UTF-8 files with a byte-order mark: not part of the first row.
                line, first = line.removeprefix(UTF8_BOM), False
            yield from line.splitlines()


def _read_json(path: Path, display: str) -> Iterator[RawRow]:
    # One JSON document holds every row of the file: when it cannot be read, all of them are lost, which
    # no invalid-row threshold should hide. The job stops with the place to fix.
    try:
        document = json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{display}: not valid UTF-8 (byte {error.start}): every row of the file is lost") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{display}:{error.lineno}: malformed JSON: {error.msg} (column {error.colno}): every row of the file "
            "is lost; fix it, or write one row per line (JSONL) so that a bad row costs only itself"
        ) from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(f'{display}:1: expected a JSON list of rows, or an object with the rows in "data"')
    for index, value in enumerate(document):
        yield RawRow(f"{display}:row {index}", value=value)


# Documents in CSV cells can be long: Python's default limit (128 KiB per field) would refuse them.
csv.field_size_limit(2**31 - 1)


def _read_csv(path: Path, display: str) -> Iterator[RawRow]:
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{display}: not valid UTF-8 (byte {error.start}): every row of the file is lost; export it as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    while True:
        first_line = reader.line_num + 1  # a quoted field may span lines: report where the row starts
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # Reading on would start inside the broken field and take its pieces for rows.
            raise DataError(f"{display}:{first_line}: malformed CSV: {error}; the rest of the file is lost") from None
        if not fields:
            continue
        origin = f"{display}:{first_line}"
        if len(fields) != len(header):
            yield RawRow(origin, error=f"expected {len(header)} fields as in the header, found {len(fields)}")
            continue
        yield RawRow(origin, value=dict(zip(header, fields, strict=True)))


def _read_text(path: Path, display: str) -> Iterator[RawRow]:
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        yield RawRow(f"{display}:1", error=f"not valid UTF-8 (byte {error.start})")
        return
    yield RawRow(f"{display}:1", value={"text": text})


def _read_parquet(path: Path, display: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(f"{display}: cannot read this Parquet file: {error}") from error
    index = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for value in batch.to_pylist():
            yield RawRow(f"{display}:row {index}", value=value)
            index += 1
