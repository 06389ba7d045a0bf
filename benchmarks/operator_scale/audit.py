"""The operator's API requests, counted from kube-apiserver's audit log (pure functions).

kube-apiserver's ``apiserver_request_total`` has no user or user-agent label, so the benchmark runs
the operator under a ServiceAccount of its own and counts that user's audit events. One request
is one auditID (a watch logs ResponseStarted and ResponseComplete). Requests are sorted into:

- ``lease``: anything on coordination.k8s.io Leases (leader election renewals and the standby's reads);
- ``watch``: watch requests (each is one reconnection of a long-running watch);
- ``relist``: a list shortly before a watch of the same resource and namespace by the same
  client (user agent) starts, which is how a watch (re)connects (list, then watch from the list's
  resourceVersion); a reconcile's own lists come from another client and stay work;
- ``work``: everything else, the requests the goal counts.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELIST_SECONDS = 5.0  # how long before a watch's start a list of the same collection counts as its relist
CATEGORIES = ("work", "lease", "watch", "relist")


@dataclass(frozen=True)
class Request:
    time: float  # requestReceivedTimestamp, seconds since the epoch
    verb: str
    resource: str  # group/resource[/subresource], "" for a non-resource URL
    namespace: str
    code: int
    user_agent: str

    @property
    def collection(self) -> tuple[str, str, str]:
        return self.resource, self.namespace, self.user_agent


def parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def requests_of(lines: Iterable[str], user: str) -> list[Request]:
    """The requests ``user`` made, one per auditID, in order of arrival."""
    seen: set[str] = set()
    found = []
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if (event.get("user") or {}).get("username") != user or event.get("auditID") in seen:
            continue
        seen.add(event["auditID"])
        ref = event.get("objectRef") or {}
        resource = "/".join(
            part for part in (ref.get("apiGroup") or "core", ref.get("resource"), ref.get("subresource")) if part
        )
        found.append(
            Request(
                time=parse_time(event["requestReceivedTimestamp"]),
                verb=event.get("verb", ""),
                resource=resource if ref.get("resource") else event.get("requestURI", "").split("?")[0],
                namespace=ref.get("namespace") or "",
                code=int((event.get("responseStatus") or {}).get("code") or 0),
                user_agent=event.get("userAgent", ""),
            )
        )
    found.sort(key=lambda request: request.time)
    return found


def read_requests(path: Path, user: str) -> list[Request]:
    """``user``'s requests in the audit log at ``path`` and in the backups kube-apiserver rotated it into
    (``<stem>-<time><suffix>``, beside it: the log rotates at 100 MB unless told otherwise)."""
    files = [path, *sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))]
    found: list[Request] = []
    for file in files:
        if file.exists():
            with file.open(errors="replace") as lines:
                found.extend(requests_of(lines, user))
    return sorted(found, key=lambda request: request.time)


def categorise(requests: list[Request]) -> list[str]:
    """One category (see the module's docstring) per request, in the same order."""
    watch_starts: dict[tuple[str, str], list[float]] = {}
    for request in requests:
        if request.verb == "watch":
            watch_starts.setdefault(request.collection, []).append(request.time)

    def opens_a_watch(request: Request) -> bool:
        starts = watch_starts.get(request.collection, [])
        return any(0 <= start - request.time <= RELIST_SECONDS for start in starts)

    categories = []
    for request in requests:
        if request.resource.startswith("coordination.k8s.io/leases"):
            categories.append("lease")
        elif request.verb == "watch":
            categories.append("watch")
        elif request.verb == "list" and opens_a_watch(request):
            categories.append("relist")
        else:
            categories.append("work")
    return categories


def summarise(requests: list[Request], start: float, end: float, top: int | None = 30) -> dict[str, Any]:
    """Requests in [start, end): counts and per-minute rates by category, and what the work was (the
    ``top`` most frequent kinds of request; all of them for None)."""
    categories = categorise(requests)
    inside = [(r, c) for r, c in zip(requests, categories, strict=True) if start <= r.time < end]
    minutes = (end - start) / 60
    counts = Counter(category for _, category in inside)
    work = Counter(f"{r.verb} {r.resource} {r.code}" for r, c in inside if c == "work")
    return {
        "window_seconds": round(end - start, 3),
        "requests": {category: counts.get(category, 0) for category in CATEGORIES},
        "per_minute": {
            category: (round(counts.get(category, 0) / minutes, 3) if minutes > 0 else None) for category in CATEGORIES
        },
        "work_by_request": dict(work.most_common(top)),
        "per_minute_series": per_minute_series([r for r, c in inside if c == "work"], start, end),
        "user_agents": sorted({r.user_agent for r, _ in inside}),
    }


def per_minute_series(requests: list[Request], start: float, end: float) -> list[int]:
    """Work requests in each whole or partial minute of the window (is the rate settling or steady?)."""
    # A window of 60.001 s is one minute, not two (the sleep that timed it overshoots a little).
    buckets = [0] * max(0, math.ceil((end - start) / 60 - 0.01))
    for request in requests:
        buckets[min(int((request.time - start) // 60), len(buckets) - 1)] += 1
    return buckets
