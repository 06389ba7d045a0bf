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


def mix_by_weight(
    sources: Sequence[Sequence[T]], weights: Sequence[float], *, seed: int, purpose: str = "mix"
) -> tuple[list[T], list[int]]:
    """The mix of several sources by weight, and how many rows each source contributes to it.

    Source i makes up p_i = w_i / sum(w) of the mix and no source is repeated: the mix has
    N = min_i(n_i / p_i) rows (until the first source is used up), source i contributes its share
    c_i of N by the largest-remainder method, subsampled without replacement (the random choice
    depends on the seed, the purpose and the source's position only). A small task set with a large
    replay corpus is thus trained on once per epoch with a replay share as weighted, instead of the
    epoch growing to the corpus' size and the task set being repeated to fill its share.

    The mix is drawn once per run, so every epoch trains on the same rows of a subsampled source.
    With weights proportional to the sources' sizes the mix is the sources themselves.
    """
    if len(sources) != len(weights):
        raise ValueError("one weight per source")
    # An empty source has nothing to contribute: its share goes to the others.
    shares = [weight if rows else 0.0 for rows, weight in zip(sources, weights, strict=True)]
    weight_sum = math.fsum(shares)
    if weight_sum <= 0:
        return [], [0] * len(sources)
    # The small epsilon keeps n_i / p_i from rounding just under an integer (3 / (3/4) = 3.9999...).
    total = min(
        math.floor(len(rows) * weight_sum / share + 1e-9) for rows, share in zip(sources, shares, strict=True) if share
    )
    counts = [min(count, len(rows)) for count, rows in zip(apportion(total, shares), sources, strict=True)]
    mixed: list[T] = []
    for index, (rows, count) in enumerate(zip(sources, counts, strict=True)):
        if count == len(rows):
            mixed.extend(rows)
        elif count:
            picked = set(seeded_rng(seed, purpose, index).sample(range(len(rows)), count))
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
