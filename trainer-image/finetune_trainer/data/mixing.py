"""Held-out splits, caps on eval sets, and mixing several training sources by weight.

All three work on rows (a row is the examples one data row became; a long text is several), so
that the chunks of one document never end up on both sides of a split, and on counts alone: they
return positions of rows, so a token store's sources are split and mixed without a Python object
per row (the pipeline keeps the chosen rows in the order they were read; order is the batch
planner's business, which reshuffles every epoch). All are deterministic given the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .seeding import seeded_rng


def holdout_positions(count: int, fraction: float, *, seed: int, source: int) -> set[int]:
    """The positions of ``count`` rows held out: ``round(fraction * count)``, chosen at random by seed and source.

    A source of two rows or more holds out at least one and keeps at least one, so a requested
    eval split is never silently empty and never takes a whole source.
    """
    held = min(max(round(fraction * count), 1), count - 1) if count >= 2 else 0
    return set(seeded_rng(seed, "eval-split", source).sample(range(count), held))


def cap_positions(count: int, max_rows: int, *, seed: int, purpose: str) -> set[int] | None:
    """The positions of at most ``max_rows`` of ``count`` rows, chosen by ``seed`` and ``purpose``; None: all."""
    if count <= max_rows:
        return None
    return set(seeded_rng(seed, "cap", purpose).sample(range(count), max_rows))


def mix_selection(
    sizes: Sequence[int], weights: Sequence[float], *, seed: int, purpose: str = "mix"
) -> tuple[list[set[int] | None], list[int]]:
    """The mix of sources of ``sizes`` rows by weight: per source the positions it contributes (None: all), and counts.

    Source i makes up p_i = w_i / sum(w) of the mix and no source is repeated: the mix has
    N = min_i(n_i / p_i) rows (until the first source is used up), source i contributes its share
    c_i of N by the largest-remainder method, subsampled without replacement (the random choice
    depends on the seed, the purpose and the source's position only). A small task set with a large
    replay corpus is thus trained on once per epoch with a replay share as weighted, instead of the
    epoch growing to the corpus' size and the task set being repeated to fill its share.

    The pipeline draws a mix per epoch (its own ``purpose``), so a subsampled source gives other rows
    every epoch. With weights proportional to the sources' sizes the mix is the sources themselves.
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
