"""Events are sent from one background thread, never from a reconcile (client-go's EventBroadcaster does
the same): a reconcile queues them and goes on to its next job.

Measured (make bench-operator, 100 jobs): a new job's first reconcile records six condition changes,
and sending them took three quarters of its time, so the next job's training Job waited behind them.
Events are for people, a moment later is as good; the training Job is not.

The queue is bounded (client-go's 1,000): a flood of changes drops events, counted and logged, and never
holds a reconcile or the operator's memory. Order is kept. ``stop`` sends what is queued before it
returns, so a leader that shuts down cleanly has written everything before it releases its Lease; one
that loses its Lease exits at once (leader.exit_when_lost) and what was queued goes with it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CAPACITY = 1000
_STOP = object()


class EventRecorder:
    def __init__(self, send: Callable[[dict[str, Any]], None], capacity: int = CAPACITY):
        self._send = send
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._lock = threading.Lock()
        self.dropped = 0

    def start(self) -> EventRecorder:
        self._thread.start()
        return self

    def record(self, event: dict[str, Any]) -> None:
        """Queue ``event``; never blocks. Full: the event is dropped (and counted)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 100 == 0:  # one line per hundred, not one per event of a flood
                log.warning("event queue full: %d event(s) dropped so far", dropped)

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return  # the sender is stuck on an API server away: the daemon thread goes with the process
        self._thread.join(timeout)

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            try:
                self._send(event)
            except Exception as error:  # a bug in one event must not end the thread that sends them all
                log.warning("could not record event %s: %s", event.get("reason"), error)
