"""kopf handlers: thin. Watch events of FineTuneJobs (and of their Jobs and pods) and of
ModelAdapters (and of their verification Jobs) only enqueue a key; the controllers' workers do the work.

Only event handlers are used (no create/update/delete handlers, timers or daemons), so kopf never
writes to the user's objects: no finalizers that could block a deletion while the operator is
down, no annotations that GitOps tools would see as drift.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import kopf
from aiohttp import web

from .api import GROUP, VERSION
from .connection import Connection
from .controller import Controller
from .metrics_endpoint import MetricsAccess, build_metrics_app
from .naming import ANNOTATION_PREFIX, JOB_LABEL
from .progress.server import ProgressService, build_app
from .progress.tls import ServingTLS, load_serving_tls, refreshed_tls
from .render.verifier import ADAPTER_LABEL, adapter_of


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


def configure_kopf(settings: kopf.OperatorSettings) -> None:
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


def build_registry(jobs: Controller, adapters: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_) -> kopf.ConnectionInfo:
        return connection_info(jobs.context.kube.rest.connection)

    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task] = []

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_) -> None:
        configure_kopf(settings)
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
            service = ProgressService(context.kube, own, jobs.metrics)
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

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_) -> None:
        jobs.stop()
        adapters.stop()
        for task in tasks:
            task.cancel()
        for runner in runners:
            await runner.cleanup()

    @kopf.on.event(GROUP, VERSION, "finetunejobs", registry=registry)
    async def finetunejob_event(namespace: str, name: str, **_) -> None:
        jobs.enqueue(namespace, name)

    @kopf.on.event(GROUP, VERSION, "modeladapters", registry=registry)
    async def modeladapter_event(namespace: str, name: str, **_) -> None:
        adapters.enqueue(namespace, name)

    @kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT}, registry=registry)
    async def job_event(namespace: str, labels: dict, **_) -> None:
        jobs.enqueue(namespace, labels[JOB_LABEL])

    @kopf.on.event("batch", "v1", "jobs", labels={ADAPTER_LABEL: kopf.PRESENT}, registry=registry)
    async def verifier_job_event(namespace: str, body: kopf.Body, **_) -> None:
        if (name := adapter_of(body)) is not None:
            adapters.enqueue(namespace, name)

    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, registry=registry)
    async def pod_event(namespace: str, labels: dict, **_) -> None:
        jobs.enqueue(namespace, labels[JOB_LABEL])

    return registry
