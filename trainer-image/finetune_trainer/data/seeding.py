"""Seeded random generators that give the same numbers on every machine, rank and Python run."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seeded_rng(seed: int, *purpose: object) -> random.Random:
    """A generator for one purpose (a split, a mix, an epoch's shuffle), independent of every other.

    A string seed is hashed with SHA-512 by ``random.Random``, so the stream does not depend on
    PYTHONHASHSEED, and two purposes never share a stream by accident.
    """
    return random.Random(":".join(str(part) for part in (seed, *purpose)))  # noqa: S311 reproducible shuffling, not cryptography


def seeded_permutation(count: int, seed: int, *purpose: object) -> np.ndarray:
    """A random order of ``range(count)`` (int64) for one purpose, as :func:`seeded_rng` names purposes.

    Built from PCG64's raw 64-bit outputs, which numpy keeps the same across versions (its
    ``permutation`` and ``shuffle`` algorithms carry no such promise), sorted: a uniform random
    order, made in C for millions of items, where ``random.shuffle`` takes seconds and a Python int each.
    """
    key = ":".join(str(part) for part in (seed, *purpose)).encode()
    generator = np.random.PCG64(int.from_bytes(hashlib.sha512(key).digest()[:32], "big"))
    return np.argsort(generator.random_raw(count), kind="stable").astype(np.int64)
