"""Held-out splits, caps on eval sets, and mixing several training sources by weight.

All three work on rows (a row is the examples one data row became; a long text is several), so
that the chunks of one document never end up on both sides of a split. All are deterministic
given the seed, and keep the order rows were read in within what they return: order is the
batch planner's business (it reshuffles every epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from .seeding import seeded_rng

T = TypeVar("T")


def split_holdout(rows: Sequence[T], fraction: float, *, seed: int, source: int) -> tuple[list[T], list[T]]:
    """(train, held out): ``round(fraction * n)`` rows held out, chosen at random by seed and source.

    A source of two rows or more holds out at least one and keeps at least one, so a requested
    eval split is never silently empty and never takes a whole source.
    """
    count = len(rows)
    held = min(max(round(fraction * count), 1), count - 1) if count >= 2 else 0
    chosen = set(seeded_rng(seed, "eval-split", source).sample(range(count), held))
    train = [row for position, row in enumerate(rows) if position not in chosen]
    held_out = [row for position, row in enumerate(rows) if position in chosen]
    return train, held_out


def cap_rows(rows: Sequence[T], max_rows: int, *, seed: int, purpose: str) -> list[T]:
    """At most ``max_rows`` rows: the first ones after a shuffle seeded by ``seed`` and ``purpose``."""
    if len(rows) <= max_rows:
        return list(rows)
    kept = set(seeded_rng(seed, "cap", purpose).sample(range(len(rows)), max_rows))
    return [row for position, row in enumerate(rows) if position in kept]


def mix_by_weight(sources: Sequence[Sequence[T]], weights: Sequence[float], *, seed: int) -> tuple[list[T], list[int]]:
    """The training mix of several sources, and how many rows each source contributes to it.

    The mix has as many rows as the sources together, N = sum(n_i), so an epoch over the mix is as
    long as an epoch over the data. Source i contributes c_i rows, its share of N by normalised
    weight, w_i / sum(w), rounded by the largest-remainder method (c_i sum to N exactly; ties go to
    the earlier source). A source smaller than its share is repeated: floor(c_i / n_i) whole copies
    plus a random c_i mod n_i of its rows without replacement; a larger one is subsampled without
    replacement. The random choices depend on the seed and the source's position only.

    The mix is drawn once per run, so every epoch trains on the same rows of a subsampled source.
    With equal weights per row (w_i proportional to n_i) the mix is the sources themselves.
    """
    if len(sources) != len(weights):
        raise ValueError("one weight per source")
    total = sum(len(rows) for rows in sources)
    if total == 0:
        return [], [0] * len(sources)
    # An empty source has nothing to contribute: its share goes to the others.
    counts = apportion(total, [weight if rows else 0.0 for rows, weight in zip(sources, weights, strict=True)])
    mixed: list[T] = []
    for index, (rows, count) in enumerate(zip(sources, counts, strict=True)):
        if count == 0:
            continue
        copies, extra = divmod(count, len(rows))
        mixed.extend(rows * copies)
        picked = set(seeded_rng(seed, "mix", index).sample(range(len(rows)), extra))
        mixed.extend(row for position, row in enumerate(rows) if position in picked)
    return mixed, counts


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` by the largest-remainder method; ties go to the earlier."""
    weight_sum = math.fsum(weights)
    quotas = [total * weight / weight_sum for weight in weights]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
