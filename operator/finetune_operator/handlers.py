"""kopf handlers: thin. Watch events of FineTuneJobs (and of their Jobs, pods, Services, ConfigMaps and
ServiceAccounts), of ModelAdapters (and of their verification Jobs) and of the catalog's FineTuneModels feed
the caches (cache.py) and enqueue a key; the controllers' workers do the work.

Every watch of a kind that is not the operator's own carries a server-side label selector
(settings.watching.label_selectors): the API server sends the operator its children only, never the
cluster's other pods and Jobs. The caches are fed by index handlers, which kopf runs for every object of
every initial list before it runs any event handler: the first event handler finds them complete.

Only event handlers are used (no create/update/delete handlers, timers or daemons), so kopf never
writes to the user's objects: no finalizers that could block a deletion while the operator is
down, no annotations that GitOps tools would see as drift.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import kopf
from aiohttp import web

from .cache import Caches
from .connection import Connection
from .controller import Controller
from .kube import FINETUNEJOBS, FINETUNEMODELS, MODELADAPTERS, Kind
from .metrics_endpoint import MetricsAccess, build_metrics_app
from .naming import ANNOTATION_PREFIX, JOB_LABEL
from .progress.server import ProgressService, build_app
from .progress.tls import ServingTLS, load_serving_tls, refreshed_tls
from .render.verifier import ADAPTER_LABEL, adapter_of

LEAD_RETRY_SECONDS = 10


async def _serve(
    app: web.Application,
    port: int,
    ssl_context: ssl.SSLContext | None,
    host: str = "0.0.0.0",  # noqa: S104
) -> web.AppRunner:
    """Serve ``app``; on all interfaces by default: trainer pods and Prometheus reach the operator through
    its pod IP."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner


async def _keep_tls_fresh(context, tls: ServingTLS, ssl_context: ssl.SSLContext) -> None:
    """Reload the HTTPS endpoints' certificate now and then: cert-manager rotates the Secret's, and the
    operator's own is re-issued, so neither expires under a long-running operator."""
    while True:
        await asyncio.sleep(context.settings.progress_tls_refresh_seconds)
        try:
            newer = await asyncio.to_thread(refreshed_tls, context.kube, context.settings, tls)
        except Exception as error:  # the Secret away for a moment: keep serving the current one
            logging.getLogger(__name__).warning("progress TLS not reloaded: %s", error)
            continue
        if newer is not None:
            newer.apply_to(ssl_context)
            tls = newer
            if context.settings.progress_port:
                context.progress_ca = newer.ca_pem
            logging.getLogger(__name__).info("progress TLS certificate reloaded")


def configure_kopf(settings: kopf.OperatorSettings, caches: Caches) -> None:
    # Nothing is stored with event handlers alone; should a change handler ever be added, kopf's
    # bookkeeping goes to annotations with our own prefix, never to status (whose schema prunes it).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX,
        key="last-handled-configuration",
        ignored_fields=[
            "metadata.annotations.kubectl.kubernetes.io/last-applied-configuration",
            "metadata.annotations.argocd.argoproj.io/tracking-id",
            "metadata.labels.argocd.argoproj.io/instance",
        ],
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/kopf-finalizer"
    settings.posting.enabled = False  # our own Events say what happened; kopf's would repeat its logs
    # The resources are known and installed with the chart: no cluster-wide watch of CRDs (and of
    # namespaces in namespaced mode) just to discover them, and no RBAC for it.
    settings.scanning.disabled = True
    for kind, selector in caches.selectors().items():
        settings.watching.label_selectors[kind.group, kind.version, kind.plural] = selector
    # The initial lists come in pages: a namespace of many finished jobs is never one response held whole.
    settings.watching.chunk_size = 500
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


def connection_info(connection: Connection) -> kopf.ConnectionInfo:
    """kopf's watches use the same credentials as our client (kubeconfig or in-cluster). kopf logs in again
    when a watch is refused with 401: a token file is read afresh then, as the kubelet may have rotated it."""
    token = None
    if connection.token is not None:
        connection.token.reload()
        token = connection.token.value()
    return kopf.ConnectionInfo(
        server=connection.server,
        ca_data=connection.ca_pem,
        insecure=connection.insecure,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_data=connection.cert_pem,
        private_key_data=connection.key_pem,
    )


def build_registry(
    jobs: Controller,
    adapters: Controller,
    leading: Callable[[], bool] | None = None,
    elected: asyncio.Event | None = None,
    serving: asyncio.Event | None = None,
) -> kopf.OperatorRegistry:
    """``leading``: whether this replica holds the Lease now (leader.py LeaderElector.holds_lease), checked by the
    progress endpoint before each write; None without leader election (the only copy always leads).

    The watches start at once, a standby's too: its caches fill from them while it waits, so once elected it
    reconciles what they hold at once instead of listing everything first. What writes or serves (the TLS
    Secret, the progress and metrics endpoints, the controllers' workers) starts only once ``elected`` is set
    (None: at once); ``serving`` is set then."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_) -> kopf.ConnectionInfo:
        return connection_info(jobs.context.kube.rest.connection)

    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task] = []

    async def start_leading(logger: logging.Logger) -> None:
        """The TLS Secret (which may be written), the endpoints, the workers: once, a failed start retried whole."""
        context = jobs.context
        own = context.settings
        secure_metrics = bool(own.metrics_port) and own.metrics_secure
        if own.progress_port or secure_metrics:
            tls = await asyncio.to_thread(load_serving_tls, context.kube, own)
            ssl_context = tls.ssl_context()  # one context for both endpoints: a reload reaches them both
            tasks.append(asyncio.create_task(_keep_tls_fresh(context, tls, ssl_context)))
        if own.progress_port:
            # Published before the first reconcile, so every job's ConfigMap carries the CA.
            context.progress_ca = tls.ca_pem
            service = ProgressService(context.kube, context.caches, own, jobs.metrics, leading)
            runners.append(await _serve(build_app(service), own.progress_port, ssl_context))
            logger.info("progress endpoint listening on port %d (HTTPS)", own.progress_port)
        if own.metrics_port:

            def observe() -> None:
                jobs.observe_queue()
                adapters.observe_queue()

            if secure_metrics:
                app = build_metrics_app(jobs.metrics, observe, MetricsAccess(context.kube, jobs.metrics))
                runners.append(await _serve(app, own.metrics_port, ssl_context))
                logger.info("metrics on port %d at /metrics (HTTPS, authorized)", own.metrics_port)
            else:
                app = build_metrics_app(jobs.metrics, observe, None)
                runners.append(await _serve(app, own.metrics_port, None, host="127.0.0.1"))
                logger.warning("metrics on 127.0.0.1:%d/metrics, plain HTTP: local development only", own.metrics_port)
        jobs.start()
        adapters.start()

    async def lead(logger: logging.Logger) -> None:
        if elected is not None:
            await elected.wait()
        while True:
            try:
                await start_leading(logger)
                break
            except Exception:  # the API server away for a moment (the TLS Secret): as kopf retried startup
                logger.exception("starting the endpoints failed: retrying in %d s", LEAD_RETRY_SECONDS)
                this = asyncio.current_task()
                for task in tasks:  # what the failed start began (the TLS refresher), not this task
                    if task is not this:
                        task.cancel()
                tasks[:] = [this]
                for runner in runners:
                    await runner.cleanup()
                runners.clear()
                await asyncio.sleep(LEAD_RETRY_SECONDS)
        if serving is not None:
            serving.set()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_) -> None:
        configure_kopf(settings, jobs.context.caches)
        # Not awaited: kopf starts its watches only once the startup handlers have returned.
        tasks.append(asyncio.create_task(lead(logger)))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_) -> None:
        jobs.stop()
        adapters.stop()
        for task in tasks:
            task.cancel()
        for runner in runners:
            await runner.cleanup()

    caches = jobs.context.caches

    def owner_of(namespace: str, name: str, labels: dict, body: kopf.Body) -> None:
        # A child's change (a pod started, a ConfigMap deleted by hand) is its FineTuneJob's to look at.
        if JOB_LABEL in labels:
            jobs.enqueue(namespace, labels[JOB_LABEL])
        elif ADAPTER_LABEL in labels and (adapter := adapter_of(body)) is not None:
            adapters.enqueue(namespace, adapter)

    then = {FINETUNEJOBS: lambda namespace, name, *_: jobs.enqueue(namespace, name)}
    then[MODELADAPTERS] = lambda namespace, name, *_: adapters.enqueue(namespace, name)
    then[FINETUNEMODELS] = lambda _, name, *__: _enqueue_jobs_naming(jobs, name)
    for watched in caches.watched:
        _watch(registry, caches, watched.kind, then.get(watched.kind, owner_of))
    return registry


def _enqueue_jobs_naming(jobs: Controller, model: str) -> None:
    """A FineTuneModel created, changed or deleted: the unsettled jobs that name it resolve it again (one waiting
    for it proceeds at once, not at the next resync). Settled jobs are done with their model."""
    for raw in jobs.context.caches[FINETUNEJOBS]:
        if ((raw.get("spec") or {}).get("model") or {}).get("name") == model and not jobs.settled(raw):
            jobs.enqueue(raw["metadata"]["namespace"], raw["metadata"]["name"])


def _watch(registry: kopf.OperatorRegistry, caches: Caches, kind: Kind, then: Callable[..., None]) -> None:
    """The cache of ``kind`` and what its events trigger: an index handler stores each listed or changed
    object (kopf runs those for all initial lists before any event handler); the event handler forgets a
    deleted one, says the caches are ready, and only then enqueues: a reconcile finds the cache as it is."""
    store = caches[kind]

    @kopf.index(kind.group, kind.version, kind.plural, id=f"cache-{kind.plural}", registry=registry)
    async def cache(body: kopf.Body, **_) -> dict:
        store.observe(body)
        return {}  # the cache is ours; kopf's own index stays empty

    @kopf.on.event(kind.group, kind.version, kind.plural, id=f"event-{kind.plural}", registry=registry)
    async def event(type: str | None, namespace: str, name: str, labels: dict, body: kopf.Body, **_) -> None:
        caches.ready.set()
        if type == "DELETED":
            store.forget(body)
        then(namespace, name, labels, body)
