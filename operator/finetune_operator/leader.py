"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Replicas race for the Lease ``finetune-operator`` in the operator's namespace. Every write is a create
or a PUT carrying the resourceVersion it read, so of two replicas acting on one view only one wins
(409 for the other). The leader renews every retry period; a standby takes over once it has seen
no change to the Lease for the lease duration, measured on its own monotonic clock from the moment it
saw the last change (never from the timestamps in the Lease: the replicas' clocks may disagree).

The leader gives up when no renewal succeeded for the renew deadline, shorter than the lease duration,
so it has stopped before any standby can start: the process exits (code 3) and Kubernetes restarts it
as a fresh standby. On a clean stop it releases the Lease (no holder, a duration of one second), so a
standby takes over at its next attempt instead of after a whole lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from .kube import LEASES, Kube, KubeError
from .settings import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

LEASE_NAME = "finetune-operator"
LOST_LEASE_EXIT_CODE = 3


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    name: str = LEASE_NAME

    @classmethod
    def from_settings(cls, settings: Settings) -> ElectionConfig:
        if settings.operator_namespace is None:
            raise ValueError("leader election needs operator_namespace")
        return cls(
            namespace=settings.operator_namespace,
            identity=identity_of(settings),
            lease_duration=settings.leader_election_lease_duration_seconds,
            renew_deadline=settings.leader_election_renew_deadline_seconds,
            retry_period=settings.leader_election_retry_period_seconds,
        )


def identity_of(settings: Settings) -> str:
    """The pod's name in a cluster; elsewhere the host name with a random suffix, so that two copies
    started on one machine never both believe they hold the Lease."""
    return settings.pod_name or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def micro_time(moment: datetime) -> str:
    """A metav1.MicroTime: what a Lease's acquireTime and renewTime hold."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec, the part the election reads and writes."""

    holder: str  # "" when released
    lease_duration_seconds: int
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


def held_by_another(record: LeaseRecord, identity: str, observed_at: float, now: float) -> bool:
    """Whether another replica holds the Lease: it names a holder that is not us, and that record has not
    been left unchanged for its lease duration since we first saw it."""
    return bool(record.holder) and record.holder != identity and now < observed_at + record.lease_duration_seconds


def changed_at(previous_look: float | None, seen: float, retry_period: float) -> float:
    """When a change of the Lease first seen at ``seen`` most likely happened, on our clock: halfway since the
    previous look, which still showed the old record, but never more than half a retry period before ``seen``
    (a look that took long says little). Without a previous look, ``seen`` itself.

    A standby that polls every retry period sees each renewal up to a period late; counting the lease from
    ``seen`` would make failovers last up to a period longer than the lease. The estimate is never earlier
    than the change by more than half a period, which the settings keep below the margin between the lease
    duration and the leader's renew deadline."""
    if previous_look is None:
        return seen
    return max((previous_look + seen) / 2, seen - retry_period / 2)


def claimed(old: LeaseRecord | None, identity: str, lease_duration: float, now: datetime) -> LeaseRecord:
    """The record that acquires (or renews, when ``identity`` already holds ``old``) the Lease at ``now``."""
    stamp = micro_time(now)
    duration = max(round(lease_duration), 1)
    if old is not None and old.holder == identity:
        return replace(old, lease_duration_seconds=duration, renew_time=stamp)
    transitions = 0 if old is None else old.transitions + 1
    return LeaseRecord(identity, duration, acquire_time=stamp, renew_time=stamp, transitions=transitions)


def released(old: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record that hands the Lease back: no holder, and a duration of one second for a reader that only
    looks at the duration."""
    stamp = micro_time(now)
    return LeaseRecord("", 1, acquire_time=stamp, renew_time=stamp, transitions=old.transitions)


class LeaderElector:
    """One replica's view of the Lease. Synchronous (each step is a request or two); not thread-safe: one
    caller at a time (the async drivers below run it in a worker thread, one step after another)."""

    def __init__(
        self,
        kube: Kube,
        config: ElectionConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.kube = kube
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._lease: dict[str, Any] | None = None  # the Lease as last read or written (its resourceVersion)
        self._record: LeaseRecord | None = None
        self._observed_at = 0.0  # when the record we see last changed (changed_at), on our clock
        self._last_look: float | None = None  # when the read that showed the current record was sent
        self._renewed_at: float | None = None  # when our last write naming us the holder succeeded

    @property
    def is_leader(self) -> bool:
        return self._record is not None and self._record.holder == self.config.identity

    def holds_lease(self) -> bool:
        """Whether we hold the Lease as of a write recent enough that no standby can have taken it over: checked
        before each reconcile, it keeps a leader that was frozen (SIGSTOP, a VM paused) from writing in the moment
        between waking up and finding its Lease gone. Callable from any thread."""
        renewed_at = self._renewed_at
        return self.is_leader and renewed_at is not None and self._clock() - renewed_at < self.config.renew_deadline

    @property
    def holder(self) -> str:
        return self._record.holder if self._record else ""

    def seconds_until_expiry(self) -> float:
        """How long the Lease, as last seen, stays another's: when a standby's next attempt may succeed."""
        if self._record is None or not self._record.holder:
            return 0.0
        return max(self._observed_at + self._record.lease_duration_seconds - self._clock(), 0.0)

    def _observe(self, lease: dict[str, Any], written: bool = False, looked: float | None = None) -> None:
        """Take in the Lease as a write returned it (``written``) or as a read sent at ``looked`` found it."""
        record = LeaseRecord.of(lease)
        if record != self._record:
            now = self._clock()
            self._observed_at = now if written else changed_at(self._last_look, now, self.config.retry_period)
            self._record = record
        self._last_look = looked
        self._lease = lease
        if written and record.holder == self.config.identity:
            self._renewed_at = self._observed_at

    def _manifest(self, record: LeaseRecord, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": record.spec()}

    def _put(self, record: LeaseRecord) -> bool:
        """Write ``record`` over the Lease we last saw; False when it changed since (409)."""
        lease = self._lease or {}
        manifest = self._manifest(record, lease["metadata"]["resourceVersion"])
        try:
            written = self.kube.replace(LEASES, self.config.namespace, self.config.name, manifest)
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        self._observe(written, written=True)
        return True

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        identity, duration = self.config.identity, self.config.lease_duration
        # The fast path, for a leader renewing and for a standby whose view says the lease ran out or was
        # released: write over the Lease as last seen, without reading it first. The resourceVersion makes
        # it safe: a 409 means someone wrote since (or the answer to our last write was lost): read, decide.
        free = self._lease is not None and not held_by_another(self._record, identity, self._observed_at, self._clock())
        if free and self._put(claimed(self._record, identity, duration, self._wall_clock())):
            return True
        looked = self._clock()
        lease = self.kube.get(LEASES, self.config.namespace, self.config.name)
        if lease is None:
            record = claimed(None, self.config.identity, self.config.lease_duration, self._wall_clock())
            lease, created = self.kube.create(self._manifest(record))
            self._observe(lease, written=created)  # not created: another replica's Lease, judged next time
            return created
        self._observe(lease, looked=looked)
        if held_by_another(self._record, self.config.identity, self._observed_at, self._clock()):
            return False
        return self._put(claimed(self._record, self.config.identity, self.config.lease_duration, self._wall_clock()))

    def release(self) -> bool:
        """Hand the Lease back if we hold it; True when released."""
        if not self.is_leader:
            return False
        try:
            done = self._put(released(self._record, self._wall_clock()))
        except KubeError as error:
            log.warning("could not release the Lease: %s", error)
            return False
        return done


# -- the drivers, on the operator's event loop -----------------------------------------------------------


async def _attempt(elector: LeaderElector) -> bool:
    try:
        return await asyncio.to_thread(elector.try_acquire_or_renew)
    except Exception as error:  # the API server away for a moment: the next attempt decides
        log.warning("leader election: attempt failed: %s", error)
        return False


def next_attempt_in(until_expiry: float, retry_period: float) -> float:
    """A standby's wait before its next attempt: the retry period, or less when the leader's lease (as last
    seen) runs out sooner, so a failover costs no part of a period more. Never a busy loop: a lease already
    run out whose taking failed (a conflict, an error) waits the full period."""
    if 0 < until_expiry < retry_period:
        return until_expiry + 0.01
    return retry_period


async def acquire(elector: LeaderElector, stop: asyncio.Event) -> bool:
    """Wait until we hold the Lease (True) or ``stop`` is set (False)."""
    config = elector.config
    shown = None
    while not stop.is_set():
        if await _attempt(elector):
            return True
        if elector.holder and elector.holder != shown:
            shown = elector.holder
            log.info("standby: the Lease %s/%s is held by %s", config.namespace, config.name, shown)
        delay = next_attempt_in(elector.seconds_until_expiry(), config.retry_period)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    return False


async def keep_leading(elector: LeaderElector, clock: Callable[[], float] = time.monotonic) -> None:
    """Renew every retry period; return when no renewal succeeded for the renew deadline (leadership lost).

    A renewal that hangs counts as failed once the deadline passes: the leader must have stopped before a
    standby may take over, whatever the network does."""
    config = elector.config
    last_renewed = clock()
    pending: asyncio.Task[bool] | None = None
    try:
        while True:
            await asyncio.sleep(config.retry_period)
            if pending is None:
                pending = asyncio.create_task(_attempt(elector))
            left = last_renewed + config.renew_deadline - clock()
            done, _ = await asyncio.wait({pending}, timeout=max(left, 0.0))
            if done:
                renewed = pending.result()
                pending = None
                if renewed:
                    last_renewed = clock()
                    continue
                if elector.holder and not elector.is_leader:
                    log.error(
                        "leader election: the Lease %s/%s is now held by %s",
                        config.namespace,
                        config.name,
                        elector.holder,
                    )
                    return
            if clock() - last_renewed >= config.renew_deadline:
                log.error(
                    "leader election: no renewal of the Lease %s/%s for %.0fs: leadership lost",
                    config.namespace,
                    config.name,
                    config.renew_deadline,
                )
                return
    except asyncio.CancelledError:
        # Stopping: let a renewal in flight finish, so that the release that follows writes over it
        # instead of racing it (and losing to a 409).
        if pending is not None:
            await asyncio.wait({pending}, timeout=config.renew_deadline)
        raise


class NotLeading(RuntimeError):
    """The Lease was not renewed lately: no reconcile may write (the key is retried, or the process exits)."""


def leading_only(reconcile: Callable[P, T], elector: LeaderElector | None) -> Callable[P, T]:
    """``reconcile``, refusing to run while the Lease is not freshly ours (``LeaderElector.holds_lease``)."""
    if elector is None:
        return reconcile

    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        if not elector.holds_lease():
            raise NotLeading("the Lease is not renewed: not reconciling")
        return reconcile(*args, **kwargs)

    return guarded


def exit_when_lost(leading: asyncio.Task) -> None:
    """Done callback of ``keep_leading``'s task: leadership lost, stop at once, mid-reconcile if need be,
    before a standby takes over. Kubernetes restarts the container, which comes back as a standby."""
    if leading.cancelled():
        return
    log.error("leadership lost: exiting with code %d", LOST_LEASE_EXIT_CODE)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(LOST_LEASE_EXIT_CODE)
