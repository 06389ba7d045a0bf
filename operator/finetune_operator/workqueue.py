"""A work queue like controller-runtime's: keys, not events.

Events only say "look at this job again". Many events for one job while it is queued collapse
into one reconcile, and one job is never reconciled by two workers at once. Failures are retried
with exponential backoff per key.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable


class WorkQueue:
    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0):
        self._condition = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, threading.Timer] = {}
        self._closed = False
        self.base_delay = base_delay
        self.max_delay = max_delay

    def add(self, key: Hashable) -> None:
        with self._condition:
            if self._closed or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._condition.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        with self._condition:
            if self._closed or key in self._timers:
                return
            timer = threading.Timer(delay, self._fire, args=(key,))
            timer.daemon = True
            self._timers[key] = timer
            timer.start()

    def _fire(self, key: Hashable) -> None:
        with self._condition:
            self._timers.pop(key, None)
        self.add(key)

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to work on, or None when closed (or on timeout)."""
        with self._condition:
            while not self._queue and not self._closed:
                if not self._condition.wait(timeout):
                    return None
            if self._closed:
                return None
            key = self._queue.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            return key

    def done(self, key: Hashable) -> None:
        with self._condition:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._condition.notify()

    def retry(self, key: Hashable) -> float:
        """Mark a failed attempt; the key comes back after a growing delay, which is returned."""
        with self._condition:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        # The exponent is capped first: 2.0 ** 1100 overflows, and a worker thread must never die of it.
        delay = min(self.base_delay * 2.0 ** min(failures - 1, 30), self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        with self._condition:
            self._failures.pop(key, None)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return len(self._queue)
