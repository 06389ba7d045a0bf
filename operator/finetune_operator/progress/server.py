"""The HTTPS progress endpoint.

POST /v1/namespaces/{namespace}/finetunejobs/{name}/progress
    Authorization: Bearer <projected ServiceAccount token, audience finetune.dev/progress>
    body: an api.ProgressReport as JSON
-> 204 written; 400 malformed body (the field is named); 401 bad or missing token; 403 a good token
   for the wrong pod or job, or not rank 0; 404 no such job (or a namespace or name that is no DNS label);
   413 too large; 429 too many reports (from this job, or from this client's address); 503 the API server
   failed, the operator's caches are still filling (starting), or this replica does not hold the Lease (not_leader: a leader frozen past its lease, still
   reachable through the Service for a moment, writes nothing; the trainer retries and reaches the leader).

Each request is checked in the order of what the check costs: the names in the path (nothing), the
client's budget (nothing), the token (a TokenReview, unless answered a moment ago, yes or no), the pod and
its jobs (from the watch-fed caches: no request; 503 while they are still filling), and only then is the body
read: whoever may not report spends none of the API server's requests beyond its budget, and none of the
operator's memory or time on a body. A report that is accepted costs the status patch alone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from aiohttp import web
from finetune_core.api import ProgressReport, format_validation_error
from finetune_core.api.base import DNS_LABEL_PATTERN
from pydantic import ValidationError

from ..cache import Caches
from ..context import utc_now
from ..kube import FINETUNEJOBS, JOBS, PODS, Kind, Kube, KubeError
from ..metrics import OperatorMetrics
from ..naming import training_job_name
from ..settings import Settings
from ..status.observe import phase_on_report
from ..tokens import ReviewCache, bearer_token
from .checkpoint_events import record_checkpoint_fallback
from .identity import Refusal, caller_from_review, check_chain
from .ratelimit import RateLimiter
from .status_patch import job_gate, status_patch

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
REVIEW_CACHE_SECONDS = 10.0
# A token the API server refused is refused again without asking, for a while: retrying one costs nothing.
FAILED_REVIEW_CACHE_SECONDS = 10.0
REVIEW_CACHE_ENTRIES = 1024
# Per client address, before the token is looked at. A trainer reports every few seconds; this allows
# many times that, and caps what any one address can make the operator ask the API server.
CLIENT_RATE, CLIENT_BURST = 5.0, 20


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(DNS_LABEL_PATTERN, value) is not None


class ProgressService:
    """Authenticates and applies reports. Synchronous (it calls the API server); the app runs it in threads."""

    def __init__(
        self,
        kube: Kube,
        caches: Caches,
        settings: Settings,
        metrics: OperatorMetrics,
        leading: Callable[[], bool] | None = None,
    ):
        self.kube = kube
        self.caches = caches
        self.settings = settings
        self.metrics = metrics
        self._leading = leading
        self.limiter = RateLimiter(rate=2.0, burst=10)
        self.clients = RateLimiter(rate=CLIENT_RATE, burst=CLIENT_BURST)
        self._reviews: ReviewCache[dict] = ReviewCache(REVIEW_CACHE_ENTRIES)

    def check_leading(self) -> None:
        """Refuse unless this replica holds the Lease now: the fencing check of reconciles (leader.py
        leading_only), so a leader frozen past its lease writes no status after a new one was elected."""
        if self._leading is not None and not self._leading():
            raise Refusal(503, "not_leader", "this operator replica is not the leader; retry")

    def _review(self, token: str) -> dict:
        if (cached := self._reviews.get(token)) is not None:
            return cached
        try:
            status = self.kube.token_review(token, [self.settings.progress_audience])
        except KubeError:
            self.metrics.token_reviewed("progress", None)
            raise
        self.metrics.token_reviewed("progress", status)
        seconds = REVIEW_CACHE_SECONDS if status.get("authenticated") else FAILED_REVIEW_CACHE_SECONDS
        self._reviews.put(token, status, seconds)
        return status

    def _read(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> dict | None:
        """The object as the watch-fed cache holds it (with ``uid``, when given), never from the API server: a
        trainer reports from a pod that started seconds after its creation event, and the operator's own Job
        and FineTuneJob are in the caches before their pods exist. An object without the operator's labels
        (a tenant's own pod with a token of our audience) is not in them: refused as gone."""
        cached = self.caches[kind].get(namespace, name)
        return cached if cached is not None and (uid is None or cached["metadata"].get("uid") == uid) else None

    def authenticate(self, namespace: str, name: str, token: str) -> dict:
        """The FineTuneJob the token's pod may report for, once it is proven to be the job's rank 0."""
        caller = caller_from_review(self._review(token), namespace, self.settings.progress_audience)
        if not self.caches.ready.is_set():
            # A new leader lists everything first (a second or so): what is not listed yet is not gone. After
            # the token, so that a bad one is 401 whatever the caches hold: on a cluster with none of our
            # objects they fill without any event that says so (handlers.py), and a caller with no valid
            # token learns nothing about the operator's state. A good token's review is cached for the retry.
            raise Refusal(503, "starting", "the operator is starting; retry")
        finetunejob = self._read(FINETUNEJOBS, namespace, name)
        training_job = self._read(JOBS, namespace, training_job_name(name)) if finetunejob else None
        pod = self._read(PODS, namespace, caller.pod_name, caller.pod_uid)
        check_chain(caller, pod, training_job, finetunejob)
        # Only the job's own rank 0 spends its budget: another pod's tokens cannot starve it.
        if not self.limiter.allow((namespace, name)):
            raise Refusal(429, "rate_limited", "too many reports; send at most one every few seconds")
        return finetunejob

    def accept(self, namespace: str, name: str, finetunejob: dict, body: bytes) -> None:
        """Apply the report of an authenticated caller to ``finetunejob``'s status."""
        try:
            report = ProgressReport.model_validate_json(body)
        except ValidationError as error:
            raise Refusal(400, "invalid_body", "; ".join(format_validation_error(error))) from None
        now = utc_now()
        patch = status_patch(report, job_gate(finetunejob), now)
        if phase := phase_on_report((finetunejob.get("status") or {}).get("phase")):
            patch["phase"] = phase  # in the same write as the progress: kubectl never shows it Pending and training
        self.check_leading()  # again, just before the write: the reads above may have taken a while
        written = self.kube.merge_patch(FINETUNEJOBS, namespace, name, {"status": patch}, "status")
        # The next report (and reconcile) starts from what was written, not from the status before it.
        self.caches[FINETUNEJOBS].written(written)
        record_checkpoint_fallback(self.kube, finetunejob, report.checkpoint_fallback, now)
        status = finetunejob.get("status") or {}
        if not status.get("progress"):
            self.metrics.first_report(status.get("startTime"), now)
        self.metrics.report_accepted(namespace, name, report)


async def _read_body(request: web.Request) -> bytes:
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise Refusal(413, "too_large", f"reports are at most {MAX_BODY} bytes")
    return body


def build_app(service: ProgressService) -> web.Application:
    async def progress(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        valid_names = is_dns_label(namespace) and is_dns_label(name)
        # The path is the caller's: logged only once it is known to hold plain DNS labels.
        where = f"{namespace}/{name}" if valid_names else "an invalid path"
        try:
            if not valid_names:
                raise Refusal(404, "invalid_name", "no such FineTuneJob: namespace and name are DNS labels")
            service.check_leading()  # before anything costs a request
            if not service.clients.allow(request.remote):
                raise Refusal(429, "client_rate_limited", "too many requests from this address; retry later")
            token = bearer_token(request.headers.get("Authorization", ""))
            if token is None:
                raise Refusal(401, "missing_token", "send the projected ServiceAccount token as a Bearer token")
            if (request.content_length or 0) > MAX_BODY:
                raise Refusal(413, "too_large", f"reports are at most {MAX_BODY} bytes")
            try:
                finetunejob = await asyncio.to_thread(service.authenticate, namespace, name, token)
                body = await _read_body(request)
                await asyncio.to_thread(service.accept, namespace, name, finetunejob, body)
            except KubeError as error:
                log.warning("progress report for %s: the API server failed: %s", where, error)
                raise Refusal(503, "api_unavailable", "the operator could not reach the API server; retry") from None
        except Refusal as refusal:
            service.metrics.report_rejected(refusal.reason)
            log.info("progress report for %s refused: %s", where, refusal.reason)
            return web.json_response({"error": refusal.reason, "message": refusal.message}, status=refusal.status)
        return web.Response(status=204)

    app = web.Application(client_max_size=MAX_BODY + 1024)
    app.router.add_post("/v1/namespaces/{namespace}/finetunejobs/{name}/progress", progress)
    return app
