"""finetune-operator: run the operator (``python -m finetune_operator`` or ``finetune-operator``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

from . import logs
from .settings import Settings, SettingsError, add_arguments, from_arguments

if TYPE_CHECKING:
    from .health import Health
    from .pod_role import PodRole

log = logging.getLogger("finetune_operator")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Kubernetes operator for fine-tuning LLMs: reconciles FineTuneJobs into training Jobs "
        "and publishes ModelAdapters. Every flag can also be set by the environment variable shown.",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig outside a cluster (default: KUBECONFIG)")
    # Reconciles wait on the API server, not on the CPU: with 4, a burst of 100 new jobs took twice as long
    # to get their training Jobs as with 16 (41 s vs 20 s, the operator-scale benchmark's cluster). One key is never
    # reconciled twice at once.
    parser.add_argument("--workers", type=int, default=16, help="concurrent reconciles of FineTuneJobs")
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        settings = from_arguments(args)
    except SettingsError as error:
        print(f"finetune-operator: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    return asyncio.run(run(args, settings))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve health and start the watches at once (a standby's caches fill while it waits); once elected, start
    what writes and serves (the controllers' workers, the progress and metrics endpoints)."""
    import kopf

    from .adapters.reconcile import reconcile_adapter
    from .connection import ConfigError
    from .context import Context
    from .controller import Controller, job_metrics_recorder
    from .event_recorder import EventRecorder
    from .handlers import build_registry
    from .health import Health, Role
    from .kube import FINETUNEJOBS, MODELADAPTERS, Kube
    from .leader import ElectionConfig, LeaderElector, acquire, exit_when_lost, keep_leading, leading_only
    from .metrics import OperatorMetrics
    from .pod_role import PodRole
    from .reconcile import reconcile, settled_job

    metrics = OperatorMetrics()
    try:
        # A connection for each worker, the ModelAdapters' two, the Event sender, the Lease and the endpoints.
        kube = Kube.connect(args.kubeconfig, observe=metrics.api_request, pool_size=args.workers + 8)
    except ConfigError as error:
        print(f"finetune-operator: {error}", file=sys.stderr)
        return 2
    context = Context(kube=kube, settings=settings)
    health = Health()
    health_runner = await health.serve(settings.health_port) if settings.health_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # kopf installs its own once it runs

    elector = None
    role = None
    elected = asyncio.Event()
    election: asyncio.Task | None = None
    leading: asyncio.Task | None = None
    # Events are sent by reconciles only, which run once elected (leading_only): a standby records nothing.
    context.events = EventRecorder(context.kube.create_event).start()
    if settings.elects_leader:
        elector = LeaderElector(context.kube, ElectionConfig.from_settings(settings))
        config = elector.config
        if settings.pod_name:
            # Unmarked first: a container restarted after losing the Lease is the same pod, still marked.
            role = PodRole(context.kube, config.namespace, settings.pod_name, config.retry_period)
            role.want(False)
        log.info(
            "standby as %s: watching (its caches fill) while waiting for the Lease %s/%s",
            config.identity,
            config.namespace,
            config.name,
        )

        async def elect() -> None:
            if not await acquire(elector, stop):
                return
            # What the watches brought while standing by is reconciled from the caches, not listed again.
            cached = sum(len(context.caches[watched.kind]) for watched in context.caches.watched)
            log.info("elected leader as %s, %d objects already cached", config.identity, cached)
            health.lead(Role.LEADER)
            elected.set()

        async def renew_once_elected() -> None:
            await elected.wait()
            await keep_leading(elector)

        # Both made before kopf starts: kopf gives every task made after its start 5 s to end when it stops.
        election = asyncio.create_task(elect())
        leading = asyncio.create_task(renew_once_elected())
        leading.add_done_callback(exit_when_lost)
    else:
        if settings.leader_election:
            log.warning("leader election off: no operator namespace to keep the Lease in; run one copy only")
        health.lead(Role.SINGLE)
        elected.set()

    jobs = Controller(
        "finetunejob",
        FINETUNEJOBS,
        leading_only(reconcile, elector),
        context,
        metrics,
        args.workers,
        job_metrics_recorder(metrics),
        settled=settled_job,
    )
    adapters = Controller(
        "modeladapter", MODELADAPTERS, leading_only(reconcile_adapter, elector), context, metrics, workers=2
    )
    log.info(
        "watching %s", "all namespaces" if settings.clusterwide else "namespaces " + ", ".join(settings.namespaces)
    )
    marking = asyncio.create_task(mark_when_serving(health, role)) if role is not None else None
    registry = build_registry(
        jobs, adapters, leading=elector.holds_lease if elector else None, elected=elected, serving=health.started
    )
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces,
        )
    finally:
        # kopf has stopped the controllers (its cleanup handler): once the Events they queued are sent,
        # nothing writes any more, so the Lease can go to a standby at once. The mark goes first: the
        # Service drops this pod before a standby is elected and marks its own.
        await asyncio.to_thread(context.events.stop)
        if election is not None:
            election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await election
        if marking is not None:
            marking.cancel()
        if role is not None:
            await role.stop(timeout=elector.config.retry_period)
        if leading is not None:
            leading.remove_done_callback(exit_when_lost)
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading
        if elector is not None and await asyncio.to_thread(elector.release):
            log.info("released the Lease")
        if health_runner is not None:
            await health_runner.cleanup()
    return 0


async def mark_when_serving(health: Health, role: PodRole) -> None:
    """Mark our pod as the leader's once it serves (elected, the progress and metrics endpoints listening), so the
    Service never sends a connection to a port nobody serves yet, nor to a standby."""
    await health.started.wait()
    role.want(True)


if __name__ == "__main__":
    sys.exit(main())
