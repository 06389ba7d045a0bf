"""Sequences of examples that are not Python lists: slices and concatenations of token stores.

The batching plan needs three numbers per item (its tokens, its longest sequence, its trained
tokens) and nothing else: :func:`measure` gives them for any sequence of examples, from the
store's index arrays when the sequence is a view (no example is built), by looking at every
example when it is a plain list. Views are what keeps the corpus out of a plan's memory; the plan
itself is arrays too (batching.EpochPlan), so that a million examples cost the planner tens of
megabytes, not hundreds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .types import IGNORE_INDEX, Example, PreferenceExample

Item = Example | PreferenceExample


@dataclass(frozen=True, eq=False)
class Measures:
    """Per item, as int64 arrays (the planner works on whole arrays, never item by item)."""

    tokens: np.ndarray  # both sequences of a pair: its room in a pack, its real tokens
    longest: np.ndarray  # its longest sequence: its row's width when padded
    trained: np.ndarray  # tokens the loss is taken on
    pairs: bool  # items are preference pairs (two rows each when padded)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Measures):
            return NotImplemented
        mine, theirs = (self.tokens, self.longest, self.trained), (other.tokens, other.longest, other.trained)
        return self.pairs == other.pairs and all(map(np.array_equal, mine, theirs))

    __hash__ = None  # type: ignore[assignment]  # arrays inside


class ExampleView(Sequence):
    """A read-only sequence of examples that knows its measures without building the examples."""

    pairs: bool

    def measure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, longest, trained) per item, as int64 arrays."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        for index in range(len(self)):
            yield self[index]


class Concat(ExampleView):
    """Several views end to end: position ``i`` is in the part whose range holds it."""

    def __init__(self, parts: Sequence[ExampleView], *, pairs: bool) -> None:
        self.parts = list(parts)
        self.pairs = pairs
        self.starts = np.cumsum([0, *(len(part) for part in self.parts)], dtype=np.int64)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][index - int(self.starts[part])]

    def measure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            arrays = [part.measure_arrays() for part in self.parts]
            if len(arrays) == 1:
                self._arrays = arrays[0]  # the part's own: a copy would be 24 more bytes per example, held all run
            else:
                self._arrays = tuple(  # type: ignore[assignment]
                    np.concatenate([np.zeros(0, dtype=np.int64), *(a[k] for a in arrays)]) for k in range(3)
                )
        return self._arrays  # type: ignore[return-value]


class Subset(ExampleView):
    """The items of ``base`` at ``positions``, in that order."""

    def __init__(self, base: Sequence[Item], positions: Sequence[int] | np.ndarray) -> None:
        self.base = base
        self.positions = np.asarray(positions, dtype=np.int64)
        self.pairs = _pairs(base)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Any:
        return self.base[int(self.positions[index])]

    def measure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tokens, longest, trained = _arrays(self.base)
        return tokens[self.positions], longest[self.positions], trained[self.positions]


class Listed(ExampleView):
    """Examples held in memory (the path without a store), measured once."""

    def __init__(self, items: Sequence[Item], *, pairs: bool | None = None) -> None:
        self.items = list(items)
        self.pairs = _pairs(self.items) if pairs is None else pairs
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def measure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            measures = _measure_items(self.items)
            self._arrays = tuple(np.asarray(m, dtype=np.int64) for m in (measures[0], measures[1], measures[2]))  # type: ignore[assignment]
        return self._arrays  # type: ignore[return-value]


def measure(examples: Sequence[Item]) -> Measures:
    """The planner's numbers for every item of ``examples``."""
    return Measures(*_arrays(examples), pairs=_pairs(examples))


def expand_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every position of the ranges [start, end), in order, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Each position is its range's start plus its rank within the range.
    firsts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return firsts + np.arange(total, dtype=np.int64)


def _arrays(examples: Sequence[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(examples, ExampleView):
        return examples.measure_arrays()
    return tuple(np.asarray(m, dtype=np.int64) for m in _measure_items(examples))  # type: ignore[return-value]


def _measure_items(items: Sequence[Item]) -> tuple[list[int], list[int], list[int]]:
    tokens, longest, trained = [], [], []
    for item in items:
        sequences = (item.chosen, item.rejected) if isinstance(item, PreferenceExample) else (item,)
        tokens.append(sum(len(sequence) for sequence in sequences))
        longest.append(max(len(sequence) for sequence in sequences))
        trained.append(sum(trained_in(sequence.labels) for sequence in sequences))
    return tokens, longest, trained


def trained_in(labels: Sequence[int]) -> int:
    """Labels the loss is taken on; a sequence's first never is (nothing precedes it)."""
    if not labels:
        return 0
    return len(labels) - list(labels).count(IGNORE_INDEX) - (labels[0] != IGNORE_INDEX)


def _pairs(examples: Sequence[Item]) -> bool:
    if isinstance(examples, ExampleView):
        return examples.pairs
    return bool(len(examples)) and isinstance(examples[0], PreferenceExample)
