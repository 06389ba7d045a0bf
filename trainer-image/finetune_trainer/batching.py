"""Deterministic, resumable token-budget batching: which examples go into which micro-batch and step.

An epoch's plan is a pure function of the examples' lengths, the seed and the epoch number, so
every rank computes the same plan without talking to the others, and a resumed run recomputes
exactly the plan it was interrupted in: resuming at (epoch, step) is ``plan_steps(...)[step:]``.

Two ways to fill a micro-batch of ``micro_batch_tokens`` tokens, because the fastest differs by
device (see design/trainer-notes.md):

- packing (GPU, varlen attention): examples side by side in one row without padding, up to the
  budget, never split across rows; position ids restart at 0 for every example and ``seq_lens``
  tells the attention where examples end. Packs are filled best-fit-decreasing.
- length bucketing (CPU): rows of similar length padded to the longest in the micro-batch, with
  rows x longest <= budget, so little is spent on padding and no attention mask is needed across
  examples.

Both first shuffle the examples by (seed, epoch), work within windows of ``window`` examples
(large enough to fill packs well, small enough that an epoch's batches differ from the last's),
then shuffle the order of the micro-batches, so length does not drift through an epoch.

A preference pair (DPO) is one unit: its chosen and rejected sequence always share a micro-batch.
An example longer than the budget gets a micro-batch of its own; choose a budget of at least
maxSeqLength tokens (twice that for DPO pairs when packing) to avoid it.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from finetune_trainer.data.seeding import seeded_permutation
from finetune_trainer.data.types import IGNORE_INDEX, Batch, Example, PreferenceExample
from finetune_trainer.data.views import Measures, Subset, expand_ranges, measure, trained_in
from finetune_trainer.heap import release_freed_heap

Item = Example | PreferenceExample
MicroBatch = list[int]  # indices into the examples

DEFAULT_WINDOW = 1024


@dataclass(frozen=True)
class Step:
    """One optimizer step: the same number of micro-batches for every rank, and its token totals.

    Every rank runs ``len(step.for_rank(rank))`` forward/backward passes (equal across ranks, as
    gradient synchronisation requires) and divides its summed loss by ``trained_tokens``, the
    step's total over all ranks, so the gradient is the mean over the step's tokens without an
    extra all-reduce. A micro-batch can be empty only when an epoch has fewer examples than ranks;
    that rank must still run a zero-weighted pass.
    """

    micro_batches: tuple[tuple[tuple[int, ...], ...], ...]  # [rank][k] -> example indices
    real_tokens: int  # non-padding tokens over all ranks
    trained_tokens: int  # tokens the loss is taken on, over all ranks
    examples: int  # examples (pairs, for DPO) over all ranks

    def for_rank(self, rank: int) -> list[MicroBatch]:
        return [list(micro_batch) for micro_batch in self.micro_batches[rank]]


class EpochPlan(Sequence[Step]):
    """One epoch's optimizer steps as a few flat arrays; a :class:`Step` is built only when it is asked for.

    Micro-batch ``k`` is ``positions[batch_bounds[k]:batch_bounds[k + 1]]`` and step ``s`` is micro-batches
    ``step_bounds[s]`` up to ``step_bounds[s + 1]``, dealt to the ranks in turn. Eight bytes per example
    and a few per micro-batch and step: an epoch of ten million examples is a hundred-odd megabytes,
    where a Python object per index would be gigabytes.
    """

    def __init__(
        self,
        positions: np.ndarray,
        batch_bounds: np.ndarray,
        step_bounds: np.ndarray,
        measures: Measures,
        world_size: int,
    ) -> None:
        self.positions, self.batch_bounds, self.step_bounds = positions, batch_bounds, step_bounds
        self.world_size = world_size
        # Per step, from the examples' measures summed over the step's slice of ``positions``.
        ends = batch_bounds[step_bounds]
        self.real_tokens = _sums(measures.tokens[positions], ends)
        self.trained_tokens = _sums(measures.trained[positions], ends)
        self.examples = np.diff(ends)

    def __len__(self) -> int:
        return len(self.step_bounds) - 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        first, last = int(self.step_bounds[index]), int(self.step_bounds[index + 1])
        bounds = self.batch_bounds[first : last + 1].tolist()
        flat = self.positions[bounds[0] : bounds[-1]].tolist()
        batches = [tuple(flat[start - bounds[0] : end - bounds[0]]) for start, end in itertools.pairwise(bounds)]
        return Step(
            micro_batches=tuple(tuple(batches[rank :: self.world_size]) for rank in range(self.world_size)),
            real_tokens=int(self.real_tokens[index]),
            trained_tokens=int(self.trained_tokens[index]),
            examples=int(self.examples[index]),
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EpochPlan):
            mine = (self.positions, self.batch_bounds, self.step_bounds, self.real_tokens, self.trained_tokens)
            theirs = (other.positions, other.batch_bounds, other.step_bounds, other.real_tokens, other.trained_tokens)
            return self.world_size == other.world_size and all(map(np.array_equal, mine, theirs))
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def trained_positions(self, steps: int) -> np.ndarray:
        """The positions of every example the first ``steps`` steps (at most all of them) train on."""
        return self.positions[: self.batch_bounds[self.step_bounds[min(steps, len(self))]]]

    def mapped(self, subset: np.ndarray) -> EpochPlan:
        """The same plan over ``subset[i]`` instead of ``i`` (a plan made on a Subset, in the base's positions)."""
        plan = copy.copy(self)
        plan.positions = subset[self.positions]
        return plan


def plan_epoch(
    examples: Sequence[Item],
    micro_batch_tokens: int,
    *,
    packing: bool,
    seed: int,
    epoch: int,
    window: int = DEFAULT_WINDOW,
) -> list[MicroBatch]:
    """The micro-batches of one epoch, as example indices; every example appears exactly once.

    Only the items' lengths are read (:func:`views.measure`): a token store's examples are not built.
    """
    positions, bounds = _micro_batches(measure(examples), micro_batch_tokens, packing, seed, epoch, window)
    flat = positions.tolist()
    return [flat[start:end] for start, end in itertools.pairwise(bounds.tolist())]


def plan_steps(
    examples: Sequence[Item],
    *,
    micro_batch_tokens: int,
    batch_tokens: int,
    packing: bool,
    seed: int,
    epoch: int,
    world_size: int = 1,
    window: int = DEFAULT_WINDOW,
) -> EpochPlan:
    """The optimizer steps of one epoch (see :func:`plan_epoch` and :func:`group_into_steps`)."""
    measures = measure(examples)
    positions, bounds = _micro_batches(measures, micro_batch_tokens, packing, seed, epoch, window)
    return _grouped(positions, bounds, measures, batch_tokens=batch_tokens, world_size=world_size)


def plan_steps_after(
    examples: Sequence[Item],
    done: Sequence[dict],
    *,
    subset: Sequence[int] | np.ndarray | None = None,
    micro_batch_tokens: int,
    batch_tokens: int,
    packing: bool,
    seed: int,
    epoch: int,
    world_size: int = 1,
) -> EpochPlan:
    """The rest of an epoch begun under other layouts (a resume with more or fewer processes, say).

    ``done`` lists those layouts in order, each a dict of world_size, micro_batch_tokens and packing
    with the ``steps`` it ran: replaying their plans says which examples this epoch has trained on;
    the others are planned with the current layout. Every example of the epoch is trained on once.
    ``subset``: the positions of the epoch's examples in ``examples`` (None: all of them).
    """
    epoch_settings = {"batch_tokens": batch_tokens, "seed": seed, "epoch": epoch}
    remaining = None if subset is None else np.asarray(subset, dtype=np.int64)  # None: every example
    for segment in done:
        layout = {key: segment[key] for key in ("micro_batch_tokens", "packing", "world_size")}
        used = _plan_subset(examples, remaining, **layout, **epoch_settings).trained_positions(segment["steps"])
        if remaining is None:
            remaining = np.arange(len(examples), dtype=np.int64)
        trained = np.zeros(len(examples), dtype=bool)
        trained[used] = True
        remaining = remaining[~trained[remaining]]
    layout = {"micro_batch_tokens": micro_batch_tokens, "packing": packing, "world_size": world_size}
    return _plan_subset(examples, remaining, **layout, **epoch_settings)


def epoch_planner(bundle, *, micro_batch_tokens: int, batch_tokens: int, packing: bool, seed: int, world_size: int):
    """The plan of each epoch of a run over ``bundle`` (a data.DataBundle), as training and the preflight use it.

    Each epoch draws its own mix from the pool (the same positions, in order, when nothing is subsampled).
    The last plan is kept: the run's set-up, its total steps and the loop (at every step) ask for the same one.
    """
    last: dict[str, EpochPlan] = {}

    def plan_for_epoch(epoch: int, done: Sequence[dict] = ()) -> EpochPlan:
        key = json.dumps([epoch, list(done)], sort_keys=True)
        if key not in last:
            last.clear()  # one epoch's plan in memory at a time
            last[key] = _planned(epoch, done)
        return last[key]

    def _planned(epoch: int, done: Sequence[dict]) -> EpochPlan:
        plan = plan_steps_after(
            bundle.pool,
            done,
            subset=bundle.epoch_mix(epoch),
            micro_batch_tokens=micro_batch_tokens,
            batch_tokens=batch_tokens,
            packing=packing,
            seed=seed,
            epoch=epoch,
            world_size=world_size,
        )
        release_freed_heap()  # the plan's temporaries (several times the plan) would stay resident under training
        return plan

    return plan_for_epoch


def _plan_subset(examples: Sequence[Item], subset: np.ndarray | None, **layout) -> EpochPlan:
    if subset is None:
        return plan_steps(examples, **layout)
    return plan_steps(Subset(examples, subset), **layout).mapped(subset)


def group_into_steps(
    micro_batches: Sequence[MicroBatch],
    examples: Sequence[Item] | Measures,
    *,
    batch_tokens: int,
    world_size: int = 1,
) -> EpochPlan:
    """Consecutive micro-batches grouped into steps of about ``batch_tokens`` real tokens over all ranks.

    A step holds a multiple of ``world_size`` micro-batches, dealt to the ranks in turn. It closes at
    the multiple whose token count is nearest ``batch_tokens`` (at or past it, or short of it when
    one more round would overshoot by more). What is left at the end of the epoch is a step of its
    own if it has at least half of ``batch_tokens``, else it joins the step before; when its count
    of micro-batches is not a multiple of ``world_size``, the micro-batches with the most examples
    are halved until it is.

    A step is at least one micro-batch per rank: keep ``micro_batch_tokens * world_size`` at or
    below ``batch_tokens``, or steps grow past what was asked.
    """
    measures = examples if isinstance(examples, Measures) else measure(examples)
    positions = np.fromiter(itertools.chain.from_iterable(micro_batches), dtype=np.int64)
    bounds = np.cumsum([0, *map(len, micro_batches)], dtype=np.int64)
    return _grouped(positions, bounds, measures, batch_tokens=batch_tokens, world_size=world_size)


def _micro_batches(
    measures: Measures, budget: int, packing: bool, seed: int, epoch: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """An epoch's micro-batches as (positions, bounds): shuffled, cut into windows, packed or bucketed, reshuffled."""
    count = len(measures)
    order = seeded_permutation(count, seed, "epoch", epoch)
    # Within each window, longest first (stable: equal lengths keep their shuffled order).
    length = measures.tokens if packing else measures.longest
    order = order[np.lexsort((-length[order], np.arange(count) // window))]
    if packing:
        batch_of = _pack(length[order].tolist(), budget, window)
        order = order[np.argsort(batch_of, kind="stable")]  # each pack's examples in the order they went in
        starts = np.flatnonzero(np.diff(np.sort(batch_of), prepend=-1))
    else:
        starts = _bucket_starts(measures.longest[order], 2 if measures.pairs else 1, budget, window)
    bounds = np.append(starts, count).astype(np.int64)
    # Shuffle the micro-batches: length must not drift through the epoch.
    shuffled = seeded_permutation(len(starts), seed, "micro-batch-order", epoch)
    sizes = np.diff(bounds)[shuffled]
    starts = bounds[:-1][shuffled]
    positions = order[expand_ranges(starts, starts + sizes)]
    return positions, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _pack(lengths: list[int], budget: int, window: int) -> np.ndarray:
    """Best-fit decreasing within each window: each example, longest first, into the fullest pack it still
    fits in. ``lengths`` is in that order; returns each example's pack number (packs of a window follow the
    packs of the windows before)."""
    batch_of = np.empty(len(lengths), dtype=np.int64)
    numbers: list[int] = []
    packs = 0
    scale = window + 1  # free rooms are room * scale + pack (a window has at most ``window`` packs)
    for start in range(0, len(lengths), window):
        free: list[int] = []  # sorted: bisect finds the tightest fit, then the oldest pack
        first = packs
        for length in lengths[start : start + window]:
            if length > budget:
                numbers.append(packs)
                packs += 1
                continue
            position = bisect.bisect_left(free, length * scale)
            if position < len(free):
                encoded = free.pop(position)
                room, number = divmod(encoded, scale)
            else:
                room, number = budget, packs - first
                packs += 1
            numbers.append(first + number)
            bisect.insort(free, (room - length) * scale + number)
    batch_of[:] = numbers
    return batch_of


def _bucket_starts(longest: np.ndarray, item_rows: int, budget: int, window: int) -> np.ndarray:
    """Where each padded micro-batch starts; ``longest`` is sorted longest first within each window.

    A micro-batch takes examples while rows x its first (longest) example's length fits the budget,
    and at least one. All windows are cut side by side, one micro-batch per window per round.
    """
    count = len(longest)
    if not count:
        return np.zeros(0, dtype=np.int64)
    takes = np.maximum(1, budget // (item_rows * np.maximum(longest, 1)))
    position = np.arange(0, count, window, dtype=np.int64)
    end = np.minimum(position + window, count)
    starts = []
    while len(position):
        starts.append(position)
        position = np.minimum(position + takes[position], end)
        open_ = position < end
        position, end = position[open_], end[open_]
    return np.sort(np.concatenate(starts))


def _grouped(
    positions: np.ndarray, bounds: np.ndarray, measures: Measures, *, batch_tokens: int, world_size: int
) -> EpochPlan:
    """The micro-batches (positions, bounds) grouped into steps (see :func:`group_into_steps`)."""
    batches = len(bounds) - 1
    tokens = _sums(measures.tokens[positions], bounds)
    # A step is a run of rounds of world_size micro-batches; the last round may be short.
    rounds = _sums(tokens, np.minimum(np.arange(0, batches + world_size, world_size), batches))
    closes = _step_closes(rounds.tolist(), batches // world_size, batch_tokens)
    step_bounds = np.minimum(np.asarray([0, *closes], dtype=np.int64) * world_size, batches)
    if len(step_bounds) > 1 and (step_bounds[-1] - step_bounds[-2]) % world_size:
        bounds = _divisible_tail(positions, bounds, int(step_bounds[-2]), world_size)
        step_bounds[-1] = len(bounds) - 1
    return EpochPlan(positions, bounds, step_bounds, measures, world_size)


def _step_closes(rounds: list[int], full_rounds: int, batch_tokens: int) -> list[int]:
    """After how many rounds each step closes, for rounds of these token counts (the last may be short)."""
    closes: list[int] = []
    current = 0
    for position, tokens in enumerate(rounds):
        current += tokens
        following = position + 1
        if following > full_rounds:
            break  # a short last round: part of the tail
        next_full = following < full_rounds
        overshoot = current + (rounds[following] if next_full else 0) - batch_tokens
        if current >= batch_tokens or (next_full and overshoot > batch_tokens - current):
            closes.append(following)
            current = 0
    if rounds and (not closes or closes[-1] != len(rounds)):
        # The tail: a step of its own with at least half a step's tokens, else part of the step before.
        if closes and current < batch_tokens / 2:
            closes[-1] = len(rounds)
        else:
            closes.append(len(rounds))
    return closes


def _divisible_tail(positions: np.ndarray, bounds: np.ndarray, first: int, world_size: int) -> np.ndarray:
    """The micro-batch bounds with the last step's (from micro-batch ``first``) made a multiple of world_size.

    Halving a micro-batch keeps the order of the positions, and empty ones add none: only bounds change.
    """
    base = int(bounds[first])
    flat = positions[base:].tolist()
    group = [flat[start - base : end - base] for start, end in itertools.pairwise(bounds[first:].tolist())]
    sizes = [len(batch) for batch in _make_divisible(group, world_size)]
    return np.concatenate([bounds[:first], base + np.cumsum([0, *sizes])]).astype(np.int64)


def _sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The sum of ``values[bounds[k]:bounds[k + 1]]`` for every k (an empty range sums to 0)."""
    running = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return running[bounds[1:]] - running[bounds[:-1]]


def collate(examples: Sequence[Item], indices: Sequence[int], packing: bool, pad_id: int) -> Batch:
    """The tensors' contents of one micro-batch, as lists.

    Sequences come in index order; for preference pairs, the chosen sequence of every pair first,
    then the rejected ones in the same order (the DPO loss splits the batch in halves). Packed: one
    row, position ids restarting at 0 for each sequence. Padded: one row per sequence, padded on the
    right with ``pad_id`` (labels with IGNORE_INDEX), position ids counting on through the padding.
    The first label of every sequence is IGNORE_INDEX: in a packed row it would otherwise be
    predicted from the end of the sequence before it.
    """
    sequences = _sequences([examples[i] for i in indices])
    if not sequences:
        return Batch(input_ids=[], labels=[], position_ids=[], seq_lens=[], real_tokens=0)
    if packing:
        return Batch(
            input_ids=[[token for sequence in sequences for token in sequence.input_ids]],
            labels=[[label for sequence in sequences for label in _labels(sequence)]],
            position_ids=[[position for sequence in sequences for position in range(len(sequence))]],
            seq_lens=[[len(sequence) for sequence in sequences]],
            real_tokens=sum(len(sequence) for sequence in sequences),
        )
    width = max(len(sequence) for sequence in sequences)
    return Batch(
        input_ids=[sequence.input_ids + [pad_id] * (width - len(sequence)) for sequence in sequences],
        labels=[_labels(sequence) + [IGNORE_INDEX] * (width - len(sequence)) for sequence in sequences],
        position_ids=[list(range(width)) for _ in sequences],
        seq_lens=[[len(sequence)] for sequence in sequences],
        real_tokens=sum(len(sequence) for sequence in sequences),
    )


def trained_tokens(item: Item) -> int:
    """Tokens the loss is taken on; a sequence's first token never is (see :func:`collate`)."""
    return sum(trained_in(sequence.labels) for sequence in _sequences([item]))


def _make_divisible(group: list[MicroBatch], world_size: int) -> list[MicroBatch]:
    group = list(group)
    while len(group) % world_size:
        largest = max(range(len(group)), key=lambda i: (len(group[i]), -i))
        if len(group[largest]) < 2:
            group.extend([] for _ in range(world_size - len(group) % world_size))
            break
        half = len(group[largest]) // 2
        group[largest : largest + 1] = [group[largest][:half], group[largest][half:]]
    return group


def _sequences(items: Sequence[Item]) -> list[Example]:
    if items and isinstance(items[0], PreferenceExample):
        return [pair.chosen for pair in items] + [pair.rejected for pair in items]
    return list(items)


def _labels(sequence: Example) -> list[int]:
    return [IGNORE_INDEX, *sequence.labels[1:]] if sequence.labels else []
