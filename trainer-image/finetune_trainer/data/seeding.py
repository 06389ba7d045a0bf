"""Seeded random generators that give the same numbers on every machine, rank and Python run."""

from __future__ import annotations

import random


def seeded_rng(seed: int, *purpose: object) -> random.Random:
    """A generator for one purpose (a split, a mix, an epoch's shuffle), independent of every other.

    A string seed is hashed with SHA-512 by ``random.Random``, so the stream does not depend on
    PYTHONHASHSEED, and two purposes never share a stream by accident.
    """
    return random.Random(":".join(str(part) for part in (seed, *purpose)))  # noqa: S311 reproducible shuffling, not cryptography
