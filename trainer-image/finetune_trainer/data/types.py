"""The data pipeline's output: tokenized examples with their loss masks, ready to batch.

This is the interface between the data pipeline (reading, formats, templates, masking, mixing)
and the training loop (batching, model, optimisation). Labels follow the transformers convention:
-100 marks a token that is seen but not learned (prompt, user turns, template tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized training or evaluation row (SFT, chat or raw text)."""

    input_ids: list[int]
    labels: list[int]  # same length; IGNORE_INDEX where no loss is taken
    source: int = 0  # index of the data source it came from (mixing, statistics)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PreferenceExample:
    """One DPO row: a shared prompt with a chosen and a rejected answer, each tokenized with its prompt."""

    chosen: Example
    rejected: Example
    source: int = 0


@dataclass
class SourceStats:
    """What reading one source found; becomes api.SourceStatistics in the training report."""

    uri: str
    format: str
    rows: int = 0
    invalid_rows: int = 0
    truncated_rows: int = 0
    dropped_rows: int = 0
    tokens: int = 0
    invalid_examples: list[str] = field(default_factory=list)  # "file:line: reason", at most ten


@dataclass
class Batch:
    """A micro-batch. Packed: one row of several examples, position ids restarting at each example.

    ``seq_lens`` lists the example lengths per row so an attention implementation can keep
    examples apart (varlen kernels on GPU, a block-diagonal mask or per-length grouping on CPU).
    """

    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]]
    seq_lens: list[list[int]]
    real_tokens: int  # non-padding tokens in the batch
