"""Peak resident memory of a process and its descendants, from /proc (Linux).

The kernel keeps each process's own peak (VmHWM) exactly; a sampler adds the tree's sum, in case
an operator build ever forks helpers. The figure is the larger of the two.
"""

from __future__ import annotations

import threading
from pathlib import Path

PROC = Path("/proc")


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/<pid>/status in KiB; 0 once the process is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            tasks = list((PROC / str(current) / "task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def tree_rss_kib(pid: int) -> int:
    return sum(status_kib(p, "VmRSS") for p in [pid, *descendants(pid)])


class PeakMemory:
    """Samples a process tree's RSS every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid = pid
        self.interval = interval
        self.peak_tree_kib = 0
        self.peak_hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def start(self) -> PeakMemory:
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        """Take one sample now; returns the tree's current RSS in KiB."""
        rss = tree_rss_kib(self.pid)
        self.peak_tree_kib = max(self.peak_tree_kib, rss)
        self.peak_hwm_kib = max(self.peak_hwm_kib, status_kib(self.pid, "VmHWM"))
        return rss

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_kib(self) -> int:
        return max(self.peak_tree_kib, self.peak_hwm_kib)
