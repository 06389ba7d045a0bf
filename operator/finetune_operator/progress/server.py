"""The HTTPS progress endpoint.

POST /v1/namespaces/{namespace}/finetunejobs/{name}/progress
    Authorization: Bearer <projected ServiceAccount token, audience finetune.dev/progress>
    body: an api.ProgressReport as JSON
-> 204 written; 400 malformed body (the field is named); 401 bad or missing token; 403 a good token
   for the wrong pod or job, or not rank 0; 404 no such job; 429 too many reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time

from aiohttp import web
from pydantic import ValidationError

from ..api import ProgressReport, format_validation_error
from ..context import utc_now
from ..kube import FINETUNEJOBS, JOBS, PODS, Kube, KubeError
from ..metrics import OperatorMetrics
from ..naming import training_job_name
from ..settings import Settings
from .checkpoint_events import record_checkpoint_fallback
from .identity import Refusal, caller_from_review, check_chain
from .ratelimit import RateLimiter
from .status_patch import status_patch

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
REVIEW_CACHE_SECONDS = 10.0


class ProgressService:
    """Authenticates and applies reports. Synchronous (it calls the API server); the app runs it in threads."""

    def __init__(self, kube: Kube, settings: Settings, metrics: OperatorMetrics):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.limiter = RateLimiter(rate=2.0, burst=10)
        self._reviews: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def _review(self, token: str) -> dict:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._reviews.get(key)
            if cached and now - cached[0] < REVIEW_CACHE_SECONDS:
                return cached[1]
        status = self.kube.token_review(token, [self.settings.progress_audience])
        if status.get("authenticated"):
            with self._lock:
                if len(self._reviews) > 1024:
                    self._reviews.clear()
                self._reviews[key] = (now, status)
        return status

    def accept(self, namespace: str, name: str, token: str, body: bytes) -> None:
        caller = caller_from_review(self._review(token), namespace, self.settings.progress_audience)
        finetunejob = self.kube.get(FINETUNEJOBS, namespace, name)
        training_job = self.kube.get(JOBS, namespace, training_job_name(name)) if finetunejob else None
        pod = self.kube.get(PODS, namespace, caller.pod_name)
        check_chain(caller, pod, training_job, finetunejob)
        # Only the job's own rank 0 spends its budget: another pod's tokens cannot starve it.
        if not self.limiter.allow((namespace, name)):
            raise Refusal(429, "rate_limited", "too many reports; send at most one every few seconds")
        try:
            report = ProgressReport.model_validate_json(body)
        except ValidationError as error:
            raise Refusal(400, "invalid_body", "; ".join(format_validation_error(error))) from None
        now = utc_now()
        patch = status_patch(report, now)
        self.kube.merge_patch(FINETUNEJOBS, namespace, name, {"status": patch}, "status")
        record_checkpoint_fallback(self.kube, finetunejob, report.checkpoint_fallback, now)
        status = finetunejob.get("status") or {}
        if not status.get("progress"):
            self.metrics.first_report(status.get("startTime"), now)
        self.metrics.report_accepted(namespace, name, report)


def build_app(service: ProgressService) -> web.Application:
    async def progress(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            if not header.startswith("Bearer ") or not header[7:].strip():
                raise Refusal(401, "missing_token", "send the projected ServiceAccount token as a Bearer token")
            if (request.content_length or 0) > MAX_BODY:
                raise Refusal(413, "too_large", f"reports are at most {MAX_BODY} bytes")
            body = await request.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise Refusal(413, "too_large", f"reports are at most {MAX_BODY} bytes")
            try:
                await asyncio.to_thread(service.accept, namespace, name, header[7:].strip(), body)
            except KubeError as error:
                log.warning("progress report for %s/%s: the API server failed: %s", namespace, name, error)
                raise Refusal(503, "api_unavailable", "the operator could not reach the API server; retry") from None
        except Refusal as refusal:
            service.metrics.report_rejected(refusal.reason)
            log.info("progress report for %s/%s refused: %s", namespace, name, refusal.reason)
            return web.json_response({"error": refusal.reason, "message": refusal.message}, status=refusal.status)
        return web.Response(status=204)

    app = web.Application(client_max_size=MAX_BODY + 1024)
    app.router.add_post("/v1/namespaces/{namespace}/finetunejobs/{name}/progress", progress)
    return app


def build_metrics_app(metrics: OperatorMetrics, depth) -> web.Application:
    async def serve(_: web.Request) -> web.Response:
        depth()
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", serve)
    return app
