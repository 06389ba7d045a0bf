"""Freed heap memory goes back to the system when the trainer asks (after loading and after each epoch's plan)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from finetune_trainer.heap import release_freed_heap

pytestmark = pytest.mark.trainer

# In a process of its own, so that the heap's state is known: 160 MiB of temporaries freed below a live
# allocation, which free() alone cannot give back (only the top of the heap shrinks by itself).
SCRIPT = """
import numpy as np, psutil
from finetune_trainer.heap import release_freed_heap
del_me = np.ones(16 << 20, dtype=np.uint8)  # mapped, then freed: glibc now serves up to 16 MiB from the heap
del del_me
temporaries = [np.ones(4 << 20, dtype=np.uint8) for _ in range(40)]
pinned = np.ones(1 << 16, dtype=np.uint8)  # above them in the heap: its top cannot shrink past it
del temporaries
before = psutil.Process().memory_info().rss
released = release_freed_heap()
print(released, (before - psutil.Process().memory_info().rss) >> 20)
"""


def test_temporaries_freed_inside_the_heap_are_given_back():
    if not release_freed_heap():
        pytest.skip("this C library cannot trim its heap (not glibc)")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    released, mebibytes = result.stdout.split()
    assert released == "True"
    assert int(mebibytes) >= 120, result.stdout  # of the 160 MiB freed
