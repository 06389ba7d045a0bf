"""Events are sent from background threads, never from a reconcile (client-go's EventBroadcaster does the
same): a reconcile queues them and goes on to its next job.

Measured (make bench-operator, 100 jobs): a new job's first reconcile recorded six condition changes, and
sending them took three quarters of its time, so the next job's training Job waited behind them. Events
are for people, a moment later is as good; the training Job is not.

A few senders share the work, each object's Events always going to the same one, so one object's Events
are created in the order they were recorded. One sender alone fell minutes behind on a busy API server
(a POST took 0.2-0.8 s there, and 100 jobs make 800 Events over their lives).

Each sender's queue is bounded (client-go's 1,000 in all): a flood of changes drops Events, counted and
logged, and never holds a reconcile or the operator's memory. ``stop`` sends what is queued before it
returns, so a leader that shuts down cleanly has written everything before it releases its Lease; one
that loses its Lease exits at once (leader.exit_when_lost) and what was queued goes with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CAPACITY = 1000
SENDERS = 4
_STOP = object()


class EventRecorder:
    def __init__(self, send: Callable[[dict[str, Any]], None], capacity: int = CAPACITY, senders: int = SENDERS):
        self._send = send
        self._queues: list[queue.Queue[Any]] = [
            queue.Queue(maxsize=max(capacity // senders, 1)) for _ in range(senders)
        ]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"event-sender-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        self._lock = threading.Lock()
        self.dropped = 0

    def start(self) -> EventRecorder:
        for thread in self._threads:
            thread.start()
        return self

    def record(self, event: dict[str, Any]) -> None:
        """Queue ``event``; never blocks. Its sender's queue full: the event is dropped (and counted)."""
        involved = event.get("involvedObject") or {}
        shard = zlib.crc32(str(involved.get("uid") or involved.get("name")).encode()) % len(self._queues)
        try:
            self._queues[shard].put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 100 == 0:  # one line per hundred, not one per event of a flood
                log.warning("event queue full: %d event(s) dropped so far", dropped)

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds in all), then end the threads."""
        deadline = time.monotonic() + timeout
        for q, thread in zip(self._queues, self._threads, strict=True):
            if not thread.is_alive():
                continue
            try:
                q.put(_STOP, timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Full:
                continue  # stuck on an API server away: the daemon thread goes with the process
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0.001))

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues)

    def _run(self, events: queue.Queue[Any]) -> None:
        while (event := events.get()) is not _STOP:
            try:
                self._send(event)
            except Exception as error:  # a bug in one event must not end the thread that sends them
                log.warning("could not record event %s: %s", event.get("reason"), error)
