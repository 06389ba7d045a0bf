"""The data pipeline's entry: the resolved configuration in, tokenized train, eval and general examples out.

In order: every training source is read, validated and tokenized (sources.py); the eval split is
held out of each training source before mixing, so eval rows are never trained on, even when a
source is repeated in the mix (mixing.py); the sources are mixed by weight; an eval set or the
general data, when configured, are read the same way; every eval set is capped at
``spec.evaluation.maxSamples`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from finetune_core.api import TrainerConfig

from ..errors import ConfigError
from .mixing import cap_positions, holdout_positions, mix_selection
from .sources import LoadedSource, SourceSpec, check_usable, load_source, source_format
from .store_cache import open_or_build, store_key
from .tokenize import ExampleBuilder
from .types import Example, PreferenceExample, SourceStats
from .views import Concat, ExampleView, Listed, Subset, expand_ranges

# spec.data.eval's documented default when the configuration leaves it out.
DEFAULT_EVAL_SPLIT_FRACTION = 0.05

Resolve = Callable[[str], Path]


@dataclass
class SourceData:
    """A source's usable rows: its examples in row order, and where each row's examples are.

    Row ``r`` became examples ``row_offsets[r]`` up to ``row_offsets[r + 1]``. The examples are a
    token store's (memory-mapped) or a list (the path without a store); the rest of the pipeline
    cannot tell which.
    """

    stats: SourceStats
    examples: ExampleView
    row_offsets: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_offsets) - 1

    @classmethod
    def in_memory(cls, loaded: LoadedSource, *, pairs: bool) -> SourceData:
        offsets = np.cumsum([0, *(len(row) for row in loaded.rows)], dtype=np.int64)
        examples = Listed([example for row in loaded.rows for example in row], pairs=pairs)
        return cls(loaded.stats, examples, offsets)


@dataclass
class DataBundle:
    """Everything the training loop and the evaluation need from the data.

    ``train`` and ``eval`` hold PreferenceExample for the dpo objective, Example otherwise;
    ``general`` always holds Example (it is scored by loss only). All three are views into the
    sources' examples: with a token store, no example exists as a Python object until it is batched.
    """

    train: Sequence[Example] | Sequence[PreferenceExample]
    eval: Sequence[Example] | Sequence[PreferenceExample]
    general: Sequence[Example]
    train_stats: list[SourceStats]  # one per spec.data.train entry, in order
    eval_stats: SourceStats | None = None  # the eval set's, when spec.data.eval.uri is set
    general_stats: SourceStats | None = None
    mix_counts: list[int] = field(default_factory=list)  # rows each training source contributes to the mix
    # Every example of every training source (``train`` is epoch 0's mix of them); per source, the rows
    # that may be trained on (the eval split's are not) and where the source starts in ``pool``: each
    # epoch draws its own mix of those rows (epoch_mix).
    pool: Sequence[Example] | Sequence[PreferenceExample] = field(default_factory=list)
    sources: list[SourceData] = field(default_factory=list)
    train_rows: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seed: int = 0

    def epoch_mix(self, epoch: int) -> np.ndarray:
        """Positions in ``pool`` of the examples epoch ``epoch`` trains on, in source order.

        A source subsampled by the mix gives other rows in every epoch (epoch 0's are ``train``'s),
        so a large replay corpus is not narrowed to the same few rows for the whole run.
        """
        purpose = "mix" if epoch == 0 else f"mix-epoch-{epoch}"
        return self._mix(purpose)[0]

    def _mix(self, purpose: str) -> tuple[np.ndarray, list[int]]:
        picks, counts = mix_selection(
            [len(rows) for rows in self.train_rows], self.weights, seed=self.seed, purpose=purpose
        )
        starts, ends = _row_spans(
            self.sources, [_picked(rows, pick) for rows, pick in zip(self.train_rows, picks, strict=True)]
        )
        return expand_ranges(starts, ends), counts

    @property
    def formats(self) -> list[str]:
        """The format of each training source, declared or detected."""
        return [stats.format for stats in self.train_stats]


def load_data(config: TrainerConfig, tokenizer: Any, resolve: Resolve, store_root: Path | None = None) -> DataBundle:
    """Read, validate, tokenize, split and mix the data of one run.

    ``resolve`` turns a data URI into a local path (the storage layer's job). With ``store_root``
    every source is tokenized once into a token store below it (or found there) and read
    memory-mapped; without, it is tokenized into memory. Both give the same examples, splits and
    mixes. Raises DataError when a source is empty or has too many invalid rows, and ConfigError
    when the data cannot work with the configuration (chat rows without a chat template,
    preference rows without dpo, ...).
    """
    data, training = config.data, config.training
    if data.general is not None and data.general.format == "preference":
        raise ConfigError(
            "spec.data.general.format is preference, but general data is scored by its loss: give it text "
            "or sft data (text, messages, prompt-completion, alpaca or sharegpt)"
        )
    preference = config.objective == "dpo"
    builder = ExampleBuilder(
        tokenizer,
        max_seq_length=training.max_seq_length,
        overlong=data.overlong_rows,
        chat_template=data.chat_template,
    )

    def load(spec: SourceSpec, *, preference_rows: bool) -> SourceData:
        local = resolve(spec.uri)
        if store_root is None:
            loaded = load_source(
                spec,
                local,
                builder,
                max_invalid_fraction=data.max_invalid_fraction,
                preference=preference_rows,
                max_seq_length=training.max_seq_length,
            )
            return SourceData.in_memory(loaded, pairs=preference_rows)
        return _stored(spec, local, builder, tokenizer, config, store_root, preference_rows)

    default_format = None if data.format == "auto" else data.format
    train_sources = [
        load(
            SourceSpec(source.uri, f"spec.data.train[{index}]", source.format or default_format, index),
            preference_rows=preference,
        )
        for index, source in enumerate(data.train)
    ]
    split_fraction = DEFAULT_EVAL_SPLIT_FRACTION if data.eval is None else data.eval.split_fraction
    train_rows, held_out_rows = _hold_out(train_sources, split_fraction, seed=training.seed)
    pool = Concat([source.examples for source in train_sources], pairs=preference)

    max_samples, seed = config.evaluation.max_samples, training.seed
    weights = [source.weight for source in data.train]
    eval_stats = None
    if data.eval is not None and data.eval.uri is not None:
        eval_source = load(SourceSpec(data.eval.uri, "spec.data.eval.uri", default_format), preference_rows=preference)
        eval_stats = eval_source.stats
        eval_examples: Sequence[Any] = _capped(eval_source, max_samples, seed, "eval")
    elif held_out_rows is not None:
        # The split's eval set is mixed like the training data: a large replay corpus holds out more rows
        # than the task set, but must not outweigh it in the task loss the gate judges.
        picks, _ = mix_selection([len(rows) for rows in held_out_rows], weights, seed=seed, purpose="eval-mix")
        chosen = [_picked(rows, pick) for rows, pick in zip(held_out_rows, picks, strict=True)]
        starts, ends = _row_spans(train_sources, chosen)
        kept = _kept(len(starts), max_samples, seed, "eval")
        eval_examples = Subset(pool, expand_ranges(starts[kept], ends[kept]))
    else:
        eval_examples = Listed([], pairs=preference)

    general_source = None
    general: Sequence[Any] = []
    if data.general is not None:
        general_source = load(
            SourceSpec(data.general.uri, "spec.data.general", data.general.format), preference_rows=False
        )
        general = _capped(general_source, max_samples, seed, "general")

    bundle = DataBundle(
        train=[],
        eval=eval_examples,
        general=general,
        train_stats=[source.stats for source in train_sources],
        eval_stats=eval_stats,
        general_stats=general_source.stats if general_source else None,
        pool=pool,
        sources=train_sources,
        train_rows=train_rows,
        weights=weights,
        seed=seed,
    )
    positions, bundle.mix_counts = bundle._mix("mix")
    bundle.train = Subset(pool, positions)
    return bundle


def _stored(
    spec: SourceSpec,
    local: Path,
    builder: ExampleBuilder,
    tokenizer: Any,
    config: TrainerConfig,
    store_root: Path,
    preference: bool,
) -> SourceData:
    data, training = config.data, config.training
    format_name = source_format(spec, local, builder, preference=preference)
    key = store_key(
        uri=spec.uri,
        local_path=local,
        format_name=format_name,
        pairs=preference,
        tokenizer=tokenizer,
        builder=builder,
        max_seq_length=training.max_seq_length,
        overlong=data.overlong_rows,
    )
    try:
        store = open_or_build(
            store_root,
            key,
            uri=spec.uri,
            local_path=local,
            format_name=format_name,
            builder=builder,
            pairs=preference,
            vocab_size=len(tokenizer),
        )
    except ConfigError as error:  # from the chat template: unusable without markers
        raise ConfigError(f"{spec.field} ({spec.uri}): {error}") from error
    stats = store.stats
    check_usable(spec, stats, data.max_invalid_fraction, training.max_seq_length)
    return SourceData(stats, store.examples(spec.index), store.row_offsets)


def _hold_out(
    sources: Sequence[SourceData], fraction: float | None, *, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Each source's training rows, and each source's rows held out for evaluation (None: no split)."""
    train_rows: list[np.ndarray] = []
    held_out_rows: list[np.ndarray] = []
    for index, source in enumerate(sources):
        everything = np.arange(source.rows, dtype=np.int64)
        if not fraction:
            train_rows.append(everything)
            continue
        held = np.zeros(source.rows, dtype=bool)
        held[list(holdout_positions(source.rows, fraction, seed=seed, source=index))] = True
        train_rows.append(everything[~held])
        held_out_rows.append(everything[held])
    return train_rows, held_out_rows if fraction else None


def _picked(rows: np.ndarray, pick: set[int] | None) -> np.ndarray:
    """The rows a mix picked, in their order (``pick`` holds positions in ``rows``; None: all)."""
    if pick is None:
        return rows
    return rows[np.sort(np.fromiter(pick, dtype=np.int64, count=len(pick)))]


def _row_spans(sources: Sequence[SourceData], rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Where the chosen rows' examples start and end in the concatenation of the sources' examples."""
    starts, ends, base = [], [], 0
    for source, chosen in zip(sources, rows, strict=True):
        starts.append(base + source.row_offsets[chosen])
        ends.append(base + source.row_offsets[chosen + 1])
        base += len(source.examples)
    if not starts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(starts).astype(np.int64), np.concatenate(ends).astype(np.int64)


def _kept(count: int, max_rows: int, seed: int, purpose: str) -> np.ndarray:
    kept = cap_positions(count, max_rows, seed=seed, purpose=purpose)
    if kept is None:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.fromiter(kept, dtype=np.int64, count=len(kept)))


def _capped(source: SourceData, max_rows: int, seed: int, purpose: str) -> Subset:
    """A whole source's examples, at most ``max_rows`` of its rows (eval set, general data)."""
    kept = _kept(source.rows, max_rows, seed, purpose)
    return Subset(source.examples, expand_ranges(source.row_offsets[kept], source.row_offsets[kept + 1]))
