"""One data source from file to examples: read, detect the format, validate, tokenize, account.

Every row read is counted in ``SourceStats.rows``; a row that cannot be decoded, does not fit the
format or has nothing to learn from is also counted in ``invalid_rows`` and skipped, the first ten
kept as "file:line: reason". A source whose invalid fraction exceeds ``spec.data.maxInvalidFraction``,
or that has no usable row at all, raises a DataError instead: training on broken data would waste
the GPUs and produce a model nobody asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from .formats import CHAT_FORMATS, DETECTION_ROWS, FORMATS, RowError, detect_format, parse_row
from .readers import SUPPORTED_SUFFIXES, RawRow, read_source
from .tokenize import ExampleBuilder, Tokenized
from .types import Example, PreferenceExample, SourceStats

MAX_INVALID_EXAMPLES = 10
SHOWN_INVALID_EXAMPLES = 5  # in an error message: enough to see the pattern, short enough to read in a pod status

Row = tuple[Example, ...] | tuple[PreferenceExample, ...]


@dataclass(frozen=True)
class SourceSpec:
    """A source as the configuration names it; ``field`` is where (spec.data.train[0]), for messages."""

    uri: str
    field: str
    declared_format: str | None = None  # None: detect from the first rows
    index: int = 0  # recorded in every example's ``source``


@dataclass
class LoadedSource:
    """A source's usable rows (each the examples it became) and what reading it found."""

    stats: SourceStats
    rows: list[Row] = field(default_factory=list)


def load_source(
    spec: SourceSpec,
    local_path: Path,
    builder: ExampleBuilder,
    *,
    max_invalid_fraction: float,
    preference: bool,
    max_seq_length: int,
) -> LoadedSource:
    """Read and tokenize one source; ``preference`` says whether the objective trains on preference rows."""
    rows = read_source(local_path, spec.uri)
    first = _first_decoded(rows, DETECTION_ROWS)
    format_name = spec.declared_format or _detect(spec, first)
    _check_format_fits(spec, format_name, preference, builder)

    loaded = LoadedSource(SourceStats(uri=spec.uri, format=format_name))
    try:
        for raw in itertools.chain(first, rows):
            _add_row(loaded, raw, format_name, builder, spec.index)
    except ConfigError as error:  # from the chat template: missing (preference rows) or unusable without markers
        raise ConfigError(f"{spec.field} ({spec.uri}): {error}") from error
    check_usable(spec, loaded.stats, max_invalid_fraction, max_seq_length)
    return loaded


def source_format(spec: SourceSpec, local_path: Path, builder: ExampleBuilder, *, preference: bool) -> str:
    """The source's format, declared or detected from its first rows, checked against the objective."""
    rows = read_source(local_path, spec.uri)
    try:
        format_name = spec.declared_format or _detect(spec, _first_decoded(rows, DETECTION_ROWS))
    finally:
        rows.close()  # type: ignore[attr-defined]  # a generator: closes the file it reads
    _check_format_fits(spec, format_name, preference, builder)
    return format_name


def _add_row(loaded: LoadedSource, raw: RawRow, format_name: str, builder: ExampleBuilder, index: int) -> None:
    tokenized = account_row(loaded.stats, raw, format_name, builder, index)
    if tokenized is not None:
        loaded.rows.append(tokenized.examples)


def account_row(
    stats: SourceStats, raw: RawRow, format_name: str, builder: ExampleBuilder, index: int
) -> Tokenized | None:
    """Count, validate and tokenize one row; its examples, or None when it is invalid or dropped.

    The one place a row's fate is decided: the in-memory path and the token store's workers both call it.
    """
    stats.rows += 1
    try:
        if raw.error is not None:
            raise RowError(raw.error)
        tokenized = builder.build(parse_row(format_name, raw.value), index)
    except RowError as error:
        stats.invalid_rows += 1
        if len(stats.invalid_examples) < MAX_INVALID_EXAMPLES:
            stats.invalid_examples.append(f"{raw.origin}: {error}")
        return None
    if tokenized.outcome == "dropped":
        stats.dropped_rows += 1
        return None
    if tokenized.outcome == "truncated":
        stats.truncated_rows += 1
    stats.tokens += tokenized.tokens
    return tokenized


def _first_decoded(rows: Iterator[RawRow], count: int) -> list[RawRow]:
    """Rows from the start up to the ``count``-th decoded one: malformed lines must not blind the detection."""
    first: list[RawRow] = []
    decoded = 0
    for raw in rows:
        first.append(raw)
        decoded += raw.error is None
        if decoded == count:
            break
    return first


def _detect(spec: SourceSpec, first: list[RawRow]) -> str:
    detected = detect_format(raw.value for raw in first if raw.error is None)
    if detected is not None:
        return detected
    if not first:
        raise DataError(_empty_message(spec))
    fields = sorted({key for raw in first if isinstance(raw.value, dict) for key in raw.value})
    problems = [f"{raw.origin}: {raw.error}" for raw in first if raw.error is not None]
    if fields:
        seen = f"its first rows have the fields {', '.join(fields)}"
    elif len(problems) == len(first):
        seen = "none of its rows could be decoded"
    else:
        seen = "its first rows are not objects"
    raise DataError(
        f"{spec.field} ({spec.uri}): cannot tell the format of this source: {seen}. Expected the fields of one of "
        f"{', '.join(FORMATS)} (for example messages, prompt+completion, instruction+output, conversations, "
        "text, or prompt+chosen+rejected); fix the data or declare the format in spec.data.format or the "
        f"source's format.{_listing(problems)}"
    )


def _check_format_fits(spec: SourceSpec, format_name: str, preference: bool, builder: ExampleBuilder) -> None:
    if preference and format_name != "preference":
        raise ConfigError(
            f"{spec.field} ({spec.uri}) holds {format_name} rows, but the dpo objective trains on preference rows "
            "(prompt, chosen, rejected): give it preference data, or choose the sft or pretrain objective"
        )
    if not preference and format_name == "preference":
        raise ConfigError(
            f"{spec.field} ({spec.uri}) holds preference rows (prompt, chosen, rejected), which only the dpo "
            "objective trains on: set spec.objective to dpo, or give this source sft or text data"
        )
    if format_name in CHAT_FORMATS:
        try:
            builder.chat.template  # noqa: B018 - resolving it is the check
        except ConfigError as error:
            raise ConfigError(f"{spec.field} ({spec.uri}) holds {format_name} rows, but {error}") from error


def check_usable(spec: SourceSpec, stats: SourceStats, max_invalid_fraction: float, max_seq_length: int) -> None:
    if stats.rows == 0:
        raise DataError(_empty_message(spec))
    if stats.invalid_rows == stats.rows:
        raise DataError(
            f"{spec.field} ({spec.uri}): none of its {stats.rows} rows is valid; fix them, or check that the "
            f"format ({stats.format}) is the one intended.{_listing(stats.invalid_examples)}",
            _origins(stats.invalid_examples),
        )
    if stats.invalid_rows > max_invalid_fraction * stats.rows:
        raise DataError(
            f"{spec.field} ({spec.uri}): {stats.invalid_rows} of {stats.rows} rows are invalid "
            f"({stats.invalid_rows / stats.rows:.1%}), more than spec.data.maxInvalidFraction allows "
            f"({max_invalid_fraction:.1%}). Fix or remove these rows, or raise spec.data.maxInvalidFraction to "
            f"train without them.{_listing(stats.invalid_examples)}",
            _origins(stats.invalid_examples),
        )
    if stats.rows == stats.invalid_rows + stats.dropped_rows:
        raise DataError(
            f"{spec.field} ({spec.uri}): every usable row was dropped as longer than spec.training.maxSeqLength "
            f"({max_seq_length} tokens) or left nothing to learn after truncation: raise maxSeqLength, or set "
            "spec.data.overlongRows to truncate"
        )


def _empty_message(spec: SourceSpec) -> str:
    return (
        f"{spec.field} ({spec.uri}) has no rows: check that it names a non-empty file or a directory of files "
        f"ending in {', '.join(SUPPORTED_SUFFIXES)} (optionally .gz)"
    )


def _origins(problems: Iterable[str]) -> list[str]:
    """The "file:line" of "file:line: reason" lines (a reason may hold colons, an origin's line number not)."""
    return [problem.split(": ", 1)[0] for problem in problems]


def _listing(problems: Iterable[str]) -> str:
    shown = list(itertools.islice(problems, SHOWN_INVALID_EXAMPLES))
    return "".join(f"\n  {problem}" for problem in shown) if shown else ""
