"""What every reconcile shares: the API client, the watch-fed caches, the settings, the published progress CA;
and what a reconcile returns."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from finetune_core.api import FineTuneJobStatus

from .cache import Caches
from .event_recorder import EventRecorder
from .kube import Kube
from .settings import Settings
from .status.conditions import Change


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(timestamp: str) -> dt.datetime:
    """An API timestamp (RFC 3339, ``Z`` for UTC) as an aware datetime."""
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def age(timestamp: str | None, unknown: dt.timedelta) -> dt.timedelta:
    """How long ago ``timestamp`` was; ``unknown`` when there is none."""
    return dt.datetime.now(dt.UTC) - parse_time(timestamp) if timestamp else unknown


@dataclass
class Context:
    kube: Kube
    settings: Settings
    progress_ca: str | None = None
    caches: Caches = field(default_factory=Caches)
    events: EventRecorder | None = None  # sends Events in the background; None: each is sent at once

    def record_event(self, event: dict) -> None:
        if self.events is not None:
            self.events.record(event)
        else:
            self.kube.create_event(event)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found: the object's phase (None when it is gone) and the transitions it made."""

    phase: str | None
    changes: tuple[Change, ...] = ()
    status: FineTuneJobStatus | None = None
    created: str | None = None
    requeue_after: float | None = None  # seconds until something is due (a TTL), without waiting for the resync
