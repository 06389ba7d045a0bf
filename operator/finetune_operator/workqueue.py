"""A work queue with client-go's semantics: keys, not events.

Events only say "look at this job again". Many events for one job while it is queued collapse into
one reconcile, and one job is never reconciled by two workers at once: a key added while it is being
processed is queued again once its worker is done.

Delayed keys wait in one heap ordered by deadline, drained by the workers' own ``get`` (no thread, no
timer per key: 3,000 delayed keys cost 3,000 heap entries). For each key the earliest deadline wins:
a retry in one second replaces a pending look in thirty, and a later deadline never postpones an
earlier one. Failures back off per key, exponentially and capped, until ``forget`` says the key
succeeded (client-go's ItemExponentialFailureRateLimiter).

The clock is injected, so the deadline rules are tested without sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Protocol


class QueueObserver(Protocol):
    """Where the queue reports what its metrics need (metrics.OperatorMetrics.workqueue)."""

    def waited(self, seconds: float) -> None:
        """A key was handed to a worker ``seconds`` after it was queued (or after it fell due)."""

    def retried(self) -> None:
        """A failed key was put back with backoff."""


class _Unobserved:
    def waited(self, seconds: float) -> None:
        pass

    def retried(self) -> None:
        pass


class WorkQueue:
    def __init__(
        self,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        observer: QueueObserver | None = None,
    ):
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._observer = observer or _Unobserved()
        self._condition = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()  # queued, or to be queued again once processed
        self._processing: set[Hashable] = set()
        self._queued_at: dict[Hashable, float] = {}  # for the latency metric
        self._failures: dict[Hashable, int] = {}
        # Delayed keys: the heap may hold stale entries for a key whose deadline was moved earlier;
        # _deadlines holds the one that counts, and a popped entry that does not match it is dropped.
        self._heap: list[tuple[float, int, Hashable]] = []
        self._deadlines: dict[Hashable, float] = {}
        self._sequence = itertools.count()  # ties in deadline keep insertion order, and keys need no ordering
        self._closed = False

    # -- adding --------------------------------------------------------------------------------

    def add(self, key: Hashable) -> None:
        with self._condition:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if self._closed or key in self._dirty:
            return
        self._dirty.add(key)
        self._queued_at.setdefault(key, self._clock())
        if key not in self._processing:
            self._queue.append(key)
            self._condition.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Queue ``key`` once ``delay`` seconds have passed, unless an earlier deadline for it is pending."""
        with self._condition:
            if self._closed:
                return
            if delay <= 0:
                self._add(key)
                return
            deadline = self._clock() + delay
            pending = self._deadlines.get(key)
            if pending is not None and pending <= deadline:
                return
            self._deadlines[key] = deadline
            heapq.heappush(self._heap, (deadline, next(self._sequence), key))
            # A worker may be asleep until a later deadline: let it look at the new earliest one.
            self._condition.notify_all()

    def add_rate_limited(self, key: Hashable) -> float:
        """A failed attempt: ``key`` comes back after its backoff (base doubled per failure, capped), returned."""
        with self._condition:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        # The exponent is capped first: 2.0 ** 1100 overflows, and a worker thread must never die of it.
        delay = min(self.base_delay * 2.0 ** min(failures - 1, 30), self.max_delay)
        self._observer.retried()
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """``key`` succeeded: its next failure starts the backoff again from the base delay."""
        with self._condition:
            self._failures.pop(key, None)

    def num_requeues(self, key: Hashable) -> int:
        with self._condition:
            return self._failures.get(key, 0)

    # -- taking --------------------------------------------------------------------------------

    def _promote_due(self) -> float | None:
        """Move the keys whose deadline has come into the queue; the seconds until the next one, if any."""
        now = self._clock()
        while self._heap:
            deadline, _, key = self._heap[0]
            if self._deadlines.get(key) != deadline:
                heapq.heappop(self._heap)  # superseded by an earlier deadline, already handled
                continue
            if deadline > now:
                return deadline - now
            heapq.heappop(self._heap)
            del self._deadlines[key]
            self._queued_at.setdefault(key, deadline)  # a delayed key waits in the queue from its deadline
            self._add(key)
        return None

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to work on, or None when closed (or on timeout). Call ``done`` when finished with it."""
        with self._condition:
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                if self._closed:
                    return None
                until_due = self._promote_due()
                if self._queue:
                    break
                wait = until_due
                if end is not None:
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._condition.wait(wait)
            key = self._queue.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            queued_at = self._queued_at.pop(key, None)
        if queued_at is not None:
            self._observer.waited(max(self._clock() - queued_at, 0.0))
        return key

    def done(self, key: Hashable) -> None:
        with self._condition:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._condition.notify()

    # -- state -----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._heap.clear()
            self._deadlines.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        """Keys ready for a worker (delayed keys count once their deadline has come): the depth metric."""
        with self._condition:
            self._promote_due()
            return len(self._queue)

    def delayed(self) -> int:
        """Keys waiting for a deadline."""
        with self._condition:
            return len(self._deadlines)
