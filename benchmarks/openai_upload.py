"""How fast the OpenAI-compatible API checks an uploaded chat file, and how much it holds while doing so.

    python -m benchmarks.openai_upload [--lines 100000]

Generates a chat JSONL (three messages a line, seeded) under bench-results/, runs it through the upload
check (``openai_api.datafiles.checked_lines``, the code the server runs, one line at a time), and prints
the time and lines/s, then the peak of Python allocations in a second pass under tracemalloc (which slows
that pass several times, so its time is not the figure).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
from pathlib import Path

from finetune_operator.openai_api.datafiles import FileCheck, checked_lines

WORDS = ["ticket", "printer", "network", "login", "refund", "password", "billing", "update", "error", "install"]


def write_corpus(path: Path, lines: int) -> None:
    rnd = random.Random(0)

    def text(words: int) -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(words))

    with path.open("w") as out:
        for _ in range(lines):
            messages = [
                {"role": "system", "content": text(20)},
                {"role": "user", "content": text(40)},
                {"role": "assistant", "content": text(16)},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")


def check(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with path.open("rb") as lines:
        count = sum(1 for _ in checked_lines(lines, FileCheck()))
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    path = options.out / f"chat-{options.lines}.jsonl"
    if not path.exists():
        write_corpus(path, options.lines)
    count, seconds = check(path)
    print(
        f"upload check: {path.stat().st_size / 2**20:.1f} MiB, {count:,} lines in {seconds:.2f} s ({count / seconds:,.0f} lines/s)"
    )
    tracemalloc.start()
    check(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"upload check: peak Python allocations {peak / 2**20:.2f} MiB (one line at a time)")


if __name__ == "__main__":
    main()
