"""Prometheus metrics of the operator, named after controller-runtime's under our own prefix
(finetune_operator_reconcile_total{controller,result}, ..._reconcile_errors_total,
..._reconcile_time_seconds, ..._workqueue_depth, ..._workqueue_queue_duration_seconds,
..._workqueue_retries_total), plus what a fine-tuning platform wants on a
dashboard: jobs by phase, durations, time to first progress, and per-job training gauges that
disappear with their job."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from finetune_core.api import ProgressReport
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .context import parse_time

PREFIX = "finetune_operator"
PHASES = ("Pending", "Suspended", "Running", "Succeeded", "Failed")
JOB_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, float("inf"))


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max((parse_time(end) - parse_time(start)).total_seconds(), 0.0)


@dataclass(frozen=True)
class WorkQueueMetrics:
    """One queue's latency and retries (workqueue.QueueObserver)."""

    latency: Histogram
    retries: Counter

    def waited(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def retried(self) -> None:
        self.retries.inc()


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_total = Counter(
            f"{PREFIX}_reconcile_total", "Reconciles by controller and result.", ["controller", "result"], registry=r
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total", "Reconciles that failed.", ["controller"], registry=r
        )
        self.reconcile_time = Histogram(
            f"{PREFIX}_reconcile_time_seconds", "Time per reconcile.", ["controller"], registry=r
        )
        self.workqueue_depth = Gauge(f"{PREFIX}_workqueue_depth", "Keys waiting.", ["name"], registry=r)
        self.workqueue_latency = Histogram(
            f"{PREFIX}_workqueue_queue_duration_seconds",
            "From a key queued (or its delay over) to a worker taking it.",
            ["name"],
            registry=r,
        )
        self.workqueue_retries = Counter(
            f"{PREFIX}_workqueue_retries_total", "Keys put back with backoff after a failure.", ["name"], registry=r
        )
        self.jobs = Gauge(f"{PREFIX}_jobs", "FineTuneJobs by phase.", ["phase"], registry=r)
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "From start of training to success or failure.",
            ["result"],
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_job_queue_wait_seconds",
            "From creation to the first running training pod (scheduling, Kueue admission, image pulls).",
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.first_progress = Histogram(
            f"{PREFIX}_time_to_first_progress_seconds",
            "From the first running pod to the first progress report (model and data loading).",
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.estimate_error = Histogram(
            f"{PREFIX}_estimate_relative_error",
            "(estimated - actual) / actual training seconds of succeeded jobs, by the estimate's source "
            "(default: the shipped table; measured: this cluster's finished jobs).",
            ["source"],
            buckets=(-0.75, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
            registry=r,
        )
        self.cache_counters = {
            field: Counter(f"{PREFIX}_model_cache_{field}_total", help_text, ["namespace"], registry=r)
            for field, help_text in (
                ("hits", "Preflights that found their model whole in the namespace's shared cache."),
                ("misses", "Models the preflights downloaded into the namespace's shared cache."),
                ("bytes", "Bytes the preflights downloaded into the namespace's shared cache."),
                ("evictions", "Cache entries the preflights evicted (least recently used) to stay under the limit."),
                ("refills", "Corrupted cache entries the preflights found (size or sha256) and downloaded again."),
            )
        }
        self.progress_reports = Counter(
            f"{PREFIX}_progress_reports_total",
            "Progress reports by result and reason of refusal.",
            ["result", "reason"],
            registry=r,
        )
        self.token_reviews = Counter(
            f"{PREFIX}_token_reviews_total",
            "TokenReviews sent to the API server, by endpoint (progress, metrics) and result.",
            ["endpoint", "result"],
            registry=r,
        )
        self.subject_access_reviews = Counter(
            f"{PREFIX}_subject_access_reviews_total",
            "SubjectAccessReviews sent to the API server for /metrics, by result.",
            ["result"],
            registry=r,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests_total",
            "Requests the operator's client sent to the API server, by verb, resource and HTTP code "
            "(error: no answer). kopf's watches are not counted.",
            ["verb", "resource", "code"],
            registry=r,
        )
        labels = ["namespace", "name"]
        self.train_loss = Gauge(f"{PREFIX}_job_train_loss", "Latest training loss.", labels, registry=r)
        self.eval_loss = Gauge(f"{PREFIX}_job_eval_loss", "Latest task eval loss.", labels, registry=r)
        self.tokens_per_second = Gauge(f"{PREFIX}_job_tokens_per_second", "Real tokens per second.", labels, registry=r)
        self.progress_ratio = Gauge(f"{PREFIX}_job_progress_ratio", "step / totalSteps.", labels, registry=r)
        self.eta_seconds = Gauge(f"{PREFIX}_job_eta_seconds", "Estimated seconds left.", labels, registry=r)
        self.preemptions = Gauge(
            f"{PREFIX}_job_preemptions", "Times Kueue preempted the job (status.queue.preemptions).", labels, registry=r
        )
        self._per_job = (
            self.train_loss,
            self.eval_loss,
            self.tokens_per_second,
            self.progress_ratio,
            self.eta_seconds,
            self.preemptions,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.jobs.labels(phase).set(0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- reconciles ----------------------------------------------------------------------------

    def reconciled(self, controller: str, seconds: float, error: Exception | None) -> None:
        self.reconcile_total.labels(controller, "error" if error else "success").inc()
        if error:
            self.reconcile_errors.labels(controller).inc()
        self.reconcile_time.labels(controller).observe(seconds)

    def workqueue(self, name: str) -> WorkQueueMetrics:
        return WorkQueueMetrics(self.workqueue_latency.labels(name), self.workqueue_retries.labels(name))

    def job_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Track a job's phase; None means the job is gone (its per-job series go too)."""
        key = (namespace, name)
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
                for gauge in self._per_job:
                    with contextlib.suppress(KeyError):
                        gauge.remove(namespace, name)
            else:
                self._phases[key] = phase
            counts = {p: 0 for p in PHASES}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            self.jobs.labels(value).set(count)

    def job_started(self, created: str | None, started: str | None) -> None:
        if (seconds := _seconds_between(created, started)) is not None:
            self.queue_wait.observe(seconds)

    def job_finished(self, result: str, started: str | None, finished: str | None) -> None:
        if (seconds := _seconds_between(started, finished)) is not None:
            self.job_duration.labels(result).observe(seconds)

    def estimate_judged(self, plan) -> None:
        """A succeeded job's estimate against its measured training time (status.plan.actualSeconds)."""
        if plan is None or plan.estimate is None or not plan.actual_seconds:
            return
        error = (plan.estimate.seconds - plan.actual_seconds) / plan.actual_seconds
        self.estimate_error.labels(plan.estimate.source).observe(error)

    def cache_used(self, namespace: str, plan) -> None:
        """What a job's preflight did with the shared cache (status.plan.cache), counted when it is planned."""
        if plan is None or plan.cache is None:
            return
        for field, counter in self.cache_counters.items():
            if value := getattr(plan.cache, field):
                counter.labels(namespace).inc(value)

    def api_request(self, verb: str, resource: str, code: str) -> None:
        self.api_requests.labels(verb, resource, code).inc()

    # -- the endpoints' reviews -------------------------------------------------------------------

    def token_reviewed(self, endpoint: str, status: dict | None) -> None:
        """A TokenReview was sent; ``status`` is its answer, None when the request failed."""
        result = "error" if status is None else "authenticated" if status.get("authenticated") else "unauthenticated"
        self.token_reviews.labels(endpoint, result).inc()

    def access_reviewed(self, status: dict | None) -> None:
        result = "error" if status is None else "allowed" if status.get("allowed") else "denied"
        self.subject_access_reviews.labels(result).inc()

    # -- progress --------------------------------------------------------------------------------

    def report_accepted(self, namespace: str, name: str, report: ProgressReport) -> None:
        self.progress_reports.labels("accepted", "").inc()
        values = {
            self.train_loss: report.train_loss,
            self.eval_loss: report.eval_loss,
            self.tokens_per_second: report.tokens_per_second,
            self.progress_ratio: report.step / report.total_steps if report.total_steps else None,
            self.eta_seconds: report.eta_seconds,
        }
        for gauge, value in values.items():
            if value is not None:
                gauge.labels(namespace, name).set(value)

    def report_rejected(self, reason: str) -> None:
        self.progress_reports.labels("rejected", reason).inc()

    def first_report(self, started: str | None, now: str) -> None:
        if (seconds := _seconds_between(started, now)) is not None:
            self.first_progress.observe(seconds)
