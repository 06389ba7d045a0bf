"""Stop requests: SIGTERM (preemption, eviction, Kueue suspending the job) and SIGINT (a person at a terminal).

The handler only sets a flag. The loop looks at it at micro-batch boundaries, where the state is
consistent, and saves a checkpoint before exiting with the preempted code; Kubernetes allows the
pod its terminationGracePeriodSeconds for that.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopRequest:
    requested: bool = False
    signal_name: str | None = None

    def _handle(self, signum: int, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @classmethod
    @contextlib.contextmanager
    def installed(cls) -> Iterator[StopRequest]:
        """A stop request wired to the signals for the duration of the block (previous handlers restored)."""
        request = cls()
        previous = {signum: signal.signal(signum, request._handle) for signum in _SIGNALS}
        try:
            yield request
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
