"""Bearer tokens at the operator's HTTPS endpoints (progress, metrics): read from a request, and what the
API server answered about one, remembered a short while under the token's sha256 (never the token itself)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is none."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme == "Bearer" and token else None


class ReviewCache(Generic[Answer]):
    """Answers by token, each kept for its own time. Bounded: past ``max_entries`` the least recently used
    answer goes, so a flood of distinct tokens costs a fixed amount of memory."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.clock = clock
        self._answers: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> Answer | None:
        key = self.key(token)
        with self._lock:
            found = self._answers.get(key)
            if found is None:
                return None
            expires, answer = found
            if self.clock() >= expires:
                del self._answers[key]
                return None
            self._answers.move_to_end(key)
            return answer

    def put(self, token: str, answer: Answer, seconds: float) -> None:
        key = self.key(token)
        with self._lock:
            self._answers[key] = (self.clock() + seconds, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
