"""Benchmarks of finetune-operator's components; ``python -m benchmarks.trainer`` (``make bench-trainer``).

The benchmarks run from a clone as well as from an install: the repository's own packages
(core/, operator/, trainer-image/) are put on the import path when they are not installed, so a GPU
machine with torch, transformers, peft, accelerate and trl needs nothing installed from here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = (REPO / "core", REPO / "operator", REPO / "trainer-image")


def use_repository_packages() -> list[str]:
    """Put core/, operator/ and trainer-image/ on sys.path unless their packages import already; returns what was added."""
    added = []
    for package, directory in zip(("finetune_core", "finetune_operator", "finetune_trainer"), SOURCE_DIRS, strict=True):
        if importlib.util.find_spec(package) is None and str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
            added.append(str(directory))
    return added


use_repository_packages()
