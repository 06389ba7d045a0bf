"""A data-pipeline Batch as model tensors, with next-token targets that never cross an example boundary.

Targets are the labels shifted left by one inside each example: the last token of an example
predicts nothing (its successor in the row belongs to another example or is padding). Padding goes
at the end of a row with position ids that continue the row's last example: under causal attention
tokens after the real ones cannot influence them, and a row that holds one example then still looks
unpacked to transformers, which keeps SDPA on its fast is_causal path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.types import IGNORE_INDEX, Batch


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # (rows, length)
    position_ids: torch.Tensor  # (rows, length), restarting at 0 for every example
    targets: torch.Tensor  # (rows, length): the token each position predicts, IGNORE_INDEX where none
    example_index: torch.Tensor  # (rows, length): which example (0..examples-1) a position belongs to, -1 padding
    examples: int

    @property
    def target_mask(self) -> torch.Tensor:
        return self.targets != IGNORE_INDEX

    @property
    def target_tokens(self) -> int:
        return int(self.target_mask.sum())

    def to(self, device: torch.device) -> ModelInputs:
        return ModelInputs(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            targets=self.targets.to(device, non_blocking=True),
            example_index=self.example_index.to(device, non_blocking=True),
            examples=self.examples,
        )


# A micro-batch for a rank with nothing left to do in a step: one token, no target. It still runs
# forward and backward, because every rank must take part in the same collectives.
FILLER_BATCH = Batch(input_ids=[[0]], labels=[[IGNORE_INDEX]], position_ids=[[0]], seq_lens=[[1]], real_tokens=0)


def to_model_inputs(batch: Batch, pad_token_id: int, flat: bool = False) -> ModelInputs:
    """Tensors for ``batch``; ``flat`` joins all rows into one padding-free row (for varlen attention)."""
    if not batch.input_ids:
        batch = FILLER_BATCH
    rows = [
        _row(ids, labels, lengths)
        for ids, labels, lengths in zip(batch.input_ids, batch.labels, batch.seq_lens, strict=True)
    ]
    if flat:
        rows = [_join(rows)]
    length = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    example_index = torch.full((len(rows), length), -1, dtype=torch.long)
    offset = 0
    for i, (ids, positions, row_targets, example_of) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
        position_ids[i, :n] = torch.tensor(positions, dtype=torch.long)
        last = positions[-1] if positions else -1
        position_ids[i, n:] = torch.arange(last + 1, last + 1 + length - n)
        targets[i, :n] = torch.tensor(row_targets, dtype=torch.long)
        example_index[i, :n] = torch.tensor(example_of, dtype=torch.long) + offset
        offset += (max(example_of) + 1) if example_of else 0
    return ModelInputs(
        input_ids=input_ids,
        position_ids=position_ids,
        targets=targets,
        example_index=example_index,
        examples=offset,
    )


def _row(ids: list[int], labels: list[int], lengths: list[int]):
    """The real tokens of a row (padding dropped) with positions, shifted targets and example numbers."""
    tokens, positions, targets, example_of = [], [], [], []
    start = 0
    for number, length in enumerate(lengths):
        segment_labels = labels[start : start + length]
        tokens.extend(ids[start : start + length])
        positions.extend(range(length))
        targets.extend([*segment_labels[1:], IGNORE_INDEX])
        example_of.extend([number] * length)
        start += length
    return tokens, positions, targets, example_of


def _join(rows):
    tokens, positions, targets, example_of = [], [], [], []
    offset = 0
    for ids, row_positions, row_targets, row_examples in rows:
        tokens.extend(ids)
        positions.extend(row_positions)
        targets.extend(row_targets)
        example_of.extend(e + offset for e in row_examples)
        offset += (max(row_examples) + 1) if row_examples else 0
    return tokens, positions, targets, example_of
