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

from finetune_operator.api import TrainerConfig

from ..errors import ConfigError
from .mixing import cap_rows, mix_by_weight, split_holdout
from .sources import LoadedSource, Row, SourceSpec, load_source
from .tokenize import ExampleBuilder
from .types import Example, PreferenceExample, SourceStats

# spec.data.eval's documented default when the configuration leaves it out.
DEFAULT_EVAL_SPLIT_FRACTION = 0.05

Resolve = Callable[[str], Path]


@dataclass
class DataBundle:
    """Everything the training loop and the evaluation need from the data.

    ``train`` and ``eval`` hold PreferenceExample for the dpo objective, Example otherwise;
    ``general`` always holds Example (it is scored by loss only).
    """

    train: list[Example] | list[PreferenceExample]
    eval: list[Example] | list[PreferenceExample]
    general: list[Example]
    train_stats: list[SourceStats]  # one per spec.data.train entry, in order
    eval_stats: SourceStats | None = None  # the eval set's, when spec.data.eval.uri is set
    general_stats: SourceStats | None = None
    mix_counts: list[int] = field(default_factory=list)  # rows each training source contributes to the mix
    # Every training example of every source (``train`` is epoch 0's mix of them), and per source and
    # row the positions of that row's examples in ``pool``: each epoch draws its own mix (epoch_mix).
    pool: list[Example] | list[PreferenceExample] = field(default_factory=list)
    pool_rows: list[list[list[int]]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seed: int = 0

    def epoch_mix(self, epoch: int) -> list[int]:
        """Positions in ``pool`` of the examples epoch ``epoch`` trains on, in source order.

        A source subsampled by the mix gives other rows in every epoch (epoch 0's are ``train``'s),
        so a large replay corpus is not narrowed to the same few rows for the whole run.
        """
        purpose = "mix" if epoch == 0 else f"mix-epoch-{epoch}"
        rows, _ = mix_by_weight(self.pool_rows, self.weights, seed=self.seed, purpose=purpose)
        return [position for row in rows for position in row]

    @property
    def formats(self) -> list[str]:
        """The format of each training source, declared or detected."""
        return [stats.format for stats in self.train_stats]


def load_data(config: TrainerConfig, tokenizer: Any, resolve: Resolve) -> DataBundle:
    """Read, validate, tokenize, split and mix the data of one run.

    ``resolve`` turns a data URI into a local path (the storage layer's job). Raises DataError when
    a source is empty or has too many invalid rows, and ConfigError when the data cannot work with
    the configuration (chat rows without a chat template, preference rows without dpo, ...).
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

    def load(spec: SourceSpec, *, preference_rows: bool) -> LoadedSource:
        return load_source(
            spec,
            resolve(spec.uri),
            builder,
            max_invalid_fraction=data.max_invalid_fraction,
            preference=preference_rows,
            max_seq_length=training.max_seq_length,
        )

    default_format = None if data.format == "auto" else data.format
    train_sources = [
        load(
            SourceSpec(source.uri, f"spec.data.train[{index}]", source.format or default_format, index),
            preference_rows=preference,
        )
        for index, source in enumerate(data.train)
    ]

    split_fraction = DEFAULT_EVAL_SPLIT_FRACTION if data.eval is None else data.eval.split_fraction
    train_rows, held_out_per_source = _hold_out(train_sources, split_fraction, seed=training.seed)

    eval_stats, eval_rows = None, []
    if data.eval is not None and data.eval.uri is not None:
        eval_source = load(SourceSpec(data.eval.uri, "spec.data.eval.uri", default_format), preference_rows=preference)
        eval_rows, eval_stats = eval_source.rows, eval_source.stats
        held_out_per_source = None

    general_source = None
    if data.general is not None:
        spec = SourceSpec(data.general.uri, "spec.data.general", data.general.format)
        general_source = load(spec, preference_rows=False)

    max_samples, seed = config.evaluation.max_samples, training.seed
    weights = [source.weight for source in data.train]
    mixed, mix_counts = mix_by_weight(train_rows, weights, seed=seed)
    pool, pool_rows = _pool(train_rows)
    if held_out_per_source is not None:
        # The split's eval set is mixed like the training data: a large replay corpus holds out more rows
        # than the task set, but must not outweigh it in the task loss the gate judges.
        eval_rows, _ = mix_by_weight(held_out_per_source, weights, seed=seed, purpose="eval-mix")
    return DataBundle(
        train=_flatten(mixed),
        eval=_flatten(cap_rows(eval_rows, max_samples, seed=seed, purpose="eval")),
        general=_flatten(cap_rows(general_source.rows, max_samples, seed=seed, purpose="general"))
        if general_source
        else [],
        train_stats=[source.stats for source in train_sources],
        eval_stats=eval_stats,
        general_stats=general_source.stats if general_source else None,
        mix_counts=mix_counts,
        pool=pool,
        pool_rows=pool_rows,
        weights=weights,
        seed=seed,
    )


def _pool(sources: Sequence[Sequence[Row]]) -> tuple[list[Any], list[list[list[int]]]]:
    """Every example of every source, flattened, and each row's positions in that list."""
    pool: list[Any] = []
    positions: list[list[list[int]]] = []
    for rows in sources:
        source_positions = []
        for row in rows:
            source_positions.append(list(range(len(pool), len(pool) + len(row))))
            pool.extend(row)
        positions.append(source_positions)
    return pool, positions


def _hold_out(
    sources: Sequence[LoadedSource], fraction: float | None, *, seed: int
) -> tuple[list[list[Row]], list[list[Row]] | None]:
    """Each source's training rows, and each source's rows held out for evaluation (None: no split)."""
    train_rows: list[list[Row]] = []
    held_out_rows: list[list[Row]] = []
    for index, source in enumerate(sources):
        kept, held_out = (
            split_holdout(source.rows, fraction, seed=seed, source=index) if fraction else (source.rows, [])
        )
        train_rows.append(kept)
        held_out_rows.append(held_out)
    return train_rows, held_out_rows if fraction else None


def _flatten(rows: Sequence[Row]) -> list[Any]:
    return [example for row in rows for example in row]
