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
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_trainer.data.seeding import seeded_rng
from finetune_trainer.data.types import IGNORE_INDEX, Batch, Example, PreferenceExample
from finetune_trainer.data.views import Measures, Subset, measure, trained_in

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
    measures = measure(examples)
    order = list(range(len(examples)))
    seeded_rng(seed, "epoch", epoch).shuffle(order)
    micro_batches: list[MicroBatch] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        if packing:
            micro_batches.extend(_pack(chunk, [measures.tokens[i] for i in chunk], micro_batch_tokens))
        else:
            micro_batches.extend(_bucket(chunk, measures, micro_batch_tokens))
    seeded_rng(seed, "micro-batch-order", epoch).shuffle(micro_batches)
    return micro_batches


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
) -> list[Step]:
    """The optimizer steps of one epoch (see :func:`plan_epoch` and :func:`group_into_steps`)."""
    micro_batches = plan_epoch(examples, micro_batch_tokens, packing=packing, seed=seed, epoch=epoch, window=window)
    return group_into_steps(micro_batches, measure(examples), batch_tokens=batch_tokens, world_size=world_size)


def plan_steps_after(
    examples: Sequence[Item],
    done: Sequence[dict],
    *,
    subset: Sequence[int] | None = None,
    micro_batch_tokens: int,
    batch_tokens: int,
    packing: bool,
    seed: int,
    epoch: int,
    world_size: int = 1,
) -> list[Step]:
    """The rest of an epoch begun under other layouts (a resume with more or fewer processes, say).

    ``done`` lists those layouts in order, each a dict of world_size, micro_batch_tokens and packing
    with the ``steps`` it ran: replaying their plans says which examples this epoch has trained on;
    the others are planned with the current layout. Every example of the epoch is trained on once.
    ``subset``: the positions of the epoch's examples in ``examples`` (None: all of them).
    """
    epoch_settings = {"batch_tokens": batch_tokens, "seed": seed, "epoch": epoch}
    remaining: list[int] | None = None if subset is None else [int(i) for i in subset]  # None: every example
    for segment in done:
        layout = {key: segment[key] for key in ("micro_batch_tokens", "packing", "world_size")}
        steps = _plan_subset(examples, remaining, **layout, **epoch_settings)
        used = {i for step in steps[: segment["steps"]] for rank in step.micro_batches for batch in rank for i in batch}
        remaining = [i for i in (range(len(examples)) if remaining is None else remaining) if i not in used]
    layout = {"micro_batch_tokens": micro_batch_tokens, "packing": packing, "world_size": world_size}
    return _plan_subset(examples, remaining, **layout, **epoch_settings)


def epoch_planner(bundle, *, micro_batch_tokens: int, batch_tokens: int, packing: bool, seed: int, world_size: int):
    """The plan of each epoch of a run over ``bundle`` (a data.DataBundle), as training and the preflight use it.

    Each epoch draws its own mix from the pool (the same positions, in order, when nothing is subsampled).
    """

    def plan_for_epoch(epoch: int, done: Sequence[dict] = ()) -> list[Step]:
        return plan_steps_after(
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

    return plan_for_epoch


def _plan_subset(examples: Sequence[Item], subset: Sequence[int] | None, **layout) -> list[Step]:
    if subset is None:
        return plan_steps(examples, **layout)
    if not subset:
        return []
    steps = plan_steps(Subset(examples, subset), **layout)
    return [
        Step(
            tuple(tuple(tuple(subset[j] for j in batch) for batch in rank) for rank in step.micro_batches),
            step.real_tokens,
            step.trained_tokens,
            step.examples,
        )
        for step in steps
    ]


def group_into_steps(
    micro_batches: Sequence[MicroBatch],
    examples: Sequence[Item] | Measures,
    *,
    batch_tokens: int,
    world_size: int = 1,
) -> list[Step]:
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
    tokens = [sum(measures.tokens[i] for i in micro_batch) for micro_batch in micro_batches]
    groups: list[list[MicroBatch]] = []
    current: list[MicroBatch] = []
    current_tokens = 0
    for position, micro_batch in enumerate(micro_batches):
        current.append(micro_batch)
        current_tokens += tokens[position]
        if len(current) % world_size:
            continue
        next_round = tokens[position + 1 : position + 1 + world_size]
        overshoot = current_tokens + sum(next_round) - batch_tokens
        if current_tokens >= batch_tokens or (
            len(next_round) == world_size and overshoot > batch_tokens - current_tokens
        ):
            groups.append(current)
            current, current_tokens = [], 0
    if current:
        if groups and current_tokens < batch_tokens / 2:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [_step(_make_divisible(group, world_size), measures, world_size) for group in groups]


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


def _pack(chunk: Sequence[int], lengths: Sequence[int], budget: int) -> list[MicroBatch]:
    """Best-fit decreasing: each example, longest first, into the fullest pack it still fits in."""
    packs: list[MicroBatch] = []
    free: list[tuple[int, int]] = []  # (room left, pack number), sorted: bisect finds the tightest fit
    for length, index in sorted(zip(lengths, chunk, strict=True), key=lambda pair: -pair[0]):
        if length > budget:
            packs.append([index])
            continue
        position = bisect.bisect_left(free, (length, -1))
        if position < len(free):
            room, number = free.pop(position)
            packs[number].append(index)
        else:
            room, number = budget, len(packs)
            packs.append([index])
        bisect.insort(free, (room - length, number))
    return packs


def _bucket(chunk: Sequence[int], measures: Measures, budget: int) -> list[MicroBatch]:
    """Longest first, rows added while rows x longest row (the padded size) stays within the budget."""
    batches: list[MicroBatch] = []
    current: MicroBatch = []
    rows = longest = 0
    item_rows = 2 if measures.pairs else 1
    for index in sorted(chunk, key=lambda i: -measures.longest[i]):
        item_longest = measures.longest[index]
        if current and (rows + item_rows) * max(longest, item_longest) > budget:
            batches.append(current)
            current, rows, longest = [], 0, 0
        current.append(index)
        rows += item_rows
        longest = max(longest, item_longest)
    if current:
        batches.append(current)
    return batches


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


def _step(group: list[MicroBatch], measures: Measures, world_size: int) -> Step:
    indices = [i for micro_batch in group for i in micro_batch]
    return Step(
        micro_batches=tuple(
            tuple(tuple(micro_batch) for micro_batch in group[rank::world_size]) for rank in range(world_size)
        ),
        real_tokens=sum(measures.tokens[i] for i in indices),
        trained_tokens=sum(measures.trained[i] for i in indices),
        examples=len(indices),
    )


def _sequences(items: Sequence[Item]) -> list[Example]:
    if items and isinstance(items[0], PreferenceExample):
        return [pair.chosen for pair in items] + [pair.rejected for pair in items]
    return list(items)


def _labels(sequence: Example) -> list[int]:
    return [IGNORE_INDEX, *sequence.labels[1:]] if sequence.labels else []
