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
    chosen = holdout_positions(len(rows), fraction, seed=seed, source=source)
    train = [row for position, row in enumerate(rows) if position not in chosen]
    held_out = [row for position, row in enumerate(rows) if position in chosen]
    return train, held_out


def holdout_positions(count: int, fraction: float, *, seed: int, source: int) -> set[int]:
    """The positions :func:`split_holdout` holds out of ``count`` rows."""
    held = min(max(round(fraction * count), 1), count - 1) if count >= 2 else 0
    return set(seeded_rng(seed, "eval-split", source).sample(range(count), held))


def cap_rows(rows: Sequence[T], max_rows: int, *, seed: int, purpose: str) -> list[T]:
    """At most ``max_rows`` rows: the first ones after a shuffle seeded by ``seed`` and ``purpose``."""
    kept = cap_positions(len(rows), max_rows, seed=seed, purpose=purpose)
    if kept is None:
        return list(rows)
    return [row for position, row in enumerate(rows) if position in kept]


def cap_positions(count: int, max_rows: int, *, seed: int, purpose: str) -> set[int] | None:
    """The positions :func:`cap_rows` keeps of ``count`` rows; None: all of them."""
    if count <= max_rows:
        return None
    return set(seeded_rng(seed, "cap", purpose).sample(range(count), max_rows))


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
    picks, counts = mix_selection([len(rows) for rows in sources], weights, seed=seed, purpose=purpose)
    mixed: list[T] = []
    for rows, picked in zip(sources, picks, strict=True):
        if picked is None:
            mixed.extend(rows)
        else:
            mixed.extend(row for position, row in enumerate(rows) if position in picked)
    return mixed, counts


def mix_selection(
    sizes: Sequence[int], weights: Sequence[float], *, seed: int, purpose: str = "mix"
) -> tuple[list[set[int] | None], list[int]]:
    """What :func:`mix_by_weight` takes of sources of ``sizes`` rows: per source the positions (None: all), and counts.

    Works on sizes alone, so a token store's sources are mixed without a Python object per row.
    """
    if len(sizes) != len(weights):
        raise ValueError("one weight per source")
    # An empty source has nothing to contribute: its share goes to the others.
    shares = [weight if size else 0.0 for size, weight in zip(sizes, weights, strict=True)]
    weight_sum = math.fsum(shares)
    if weight_sum <= 0:
        return [set() for _ in sizes], [0] * len(sizes)
    # The small epsilon keeps n_i / p_i from rounding just under an integer (3 / (3/4) = 3.9999...).
    total = min(
        math.floor(size * weight_sum / share + 1e-9) for size, share in zip(sizes, shares, strict=True) if share
    )
    counts = [min(count, size) for count, size in zip(apportion(total, shares), sizes, strict=True)]
    picks: list[set[int] | None] = []
    for index, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        if count == size:
            picks.append(None)
        else:
            picks.append(set(seeded_rng(seed, purpose, index).sample(range(size), count)) if count else set())
    return picks, counts


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` by the largest-remainder method; ties go to the earlier."""
    weight_sum = math.fsum(weights)
    quotas = [total * weight / weight_sum for weight in weights]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
