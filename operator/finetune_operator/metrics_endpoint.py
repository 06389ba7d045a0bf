"""The operator's /metrics, secured as controller-runtime's secure metrics are
(filters.WithAuthenticationAndAuthorization): served over HTTPS; each request's bearer token authenticated
with a TokenReview, then authorized with a SubjectAccessReview of the non-resource URL /metrics, verb get.
401 without a token the API server accepts, 403 without the permission.

The metrics name every tenant's jobs with their losses and ETAs: only those the cluster's RBAC lets get
/metrics (the chart's ClusterRole <fullname>-metrics-reader, bound to Prometheus) read them.

What the API server answered is kept under the token's sha256 (an allowed token for a minute, a refused one
for ten seconds), and each client address has a budget before its token is looked at: a scrape every few
seconds costs one TokenReview and one SubjectAccessReview a minute, a flood of bad tokens almost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .kube import Kube, KubeError
from .metrics import OperatorMetrics
from .progress.ratelimit import RateLimiter
from .tokens import ReviewCache, bearer_token

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
ALLOWED_SECONDS = 60.0
REFUSED_SECONDS = 10.0
CACHE_ENTRIES = 1024
# Per client address, before its token is looked at: Prometheus scrapes every 15 to 60 seconds.
CLIENT_RATE, CLIENT_BURST = 1.0, 10


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 401 or 403
    message: str

    @property
    def allowed(self) -> bool:
        return self.status == 200


ALLOWED = Decision(200, "")
UNAUTHENTICATED = Decision(401, "the token is not valid: send a ServiceAccount token as a Bearer token")
FORBIDDEN = Decision(403, f"the token's user may not get {METRICS_PATH}: bind it to the metrics-reader ClusterRole")


class MetricsAccess:
    """Who may read /metrics, as the API server decides. Synchronous (it calls the API server)."""

    def __init__(self, kube: Kube, metrics: OperatorMetrics):
        self.kube = kube
        self.metrics = metrics
        self.clients = RateLimiter(rate=CLIENT_RATE, burst=CLIENT_BURST)
        self._decisions: ReviewCache[Decision] = ReviewCache(CACHE_ENTRIES)

    def decide(self, token: str) -> Decision:
        if (cached := self._decisions.get(token)) is not None:
            return cached
        decision = self._review(token)
        self._decisions.put(token, decision, ALLOWED_SECONDS if decision.allowed else REFUSED_SECONDS)
        return decision

    def _review(self, token: str) -> Decision:
        try:
            # No audiences: the API server's own, those of ServiceAccount tokens such as Prometheus' (a trainer's
            # progress token, of another audience, is no good here).
            review = self.kube.token_review(token, [])
        except KubeError:
            self.metrics.token_reviewed("metrics", None)
            raise
        self.metrics.token_reviewed("metrics", review)
        if not review.get("authenticated"):
            return UNAUTHENTICATED
        try:
            access = self.kube.subject_access_review(review.get("user") or {}, METRICS_PATH, "get")
        except KubeError:
            self.metrics.access_reviewed(None)
            raise
        self.metrics.access_reviewed(access)
        return ALLOWED if access.get("allowed") else FORBIDDEN


def build_metrics_app(
    metrics: OperatorMetrics, observe: Callable[[], object], access: MetricsAccess | None
) -> web.Application:
    """/metrics; ``observe`` refreshes what is sampled at scrape time (queue depths). Without ``access``,
    anyone who reaches the port reads it: for local development only, on loopback."""

    def refused(status: int, message: str) -> web.Response:
        headers = {"WWW-Authenticate": 'Bearer realm="finetune-operator"'} if status == 401 else None
        return web.Response(status=status, text=message + "\n", headers=headers)

    async def serve(request: web.Request) -> web.Response:
        if access is not None:
            if not access.clients.allow(request.remote):
                return refused(429, "too many requests from this address; retry later")
            token = bearer_token(request.headers.get("Authorization", ""))
            if token is None:
                return refused(401, "send a ServiceAccount token as a Bearer token")
            try:
                decision = await asyncio.to_thread(access.decide, token)
            except KubeError as error:
                log.warning("metrics request not checked: the API server failed: %s", error)
                return refused(503, "the operator could not reach the API server; retry")
            if not decision.allowed:
                return refused(decision.status, decision.message)
        observe()
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get(METRICS_PATH, serve)
    return app
